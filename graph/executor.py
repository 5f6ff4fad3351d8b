"""The executor: runs a validated API prompt (COMPAT §1.2-1.4, §3.2-3.7, §5.2, §6).

Only the requested output nodes and what they need run, in the order graph.scheduler picks.
A node's arguments come from graph.inputs, are checked by graph.value_checks, and its results
become outputs through graph.outputs; failures are translated in graph.failures. Lazy inputs,
blockers, expansion, async nodes and interrupts are handled by the run loop here; keys and caches
live in graph.signature and graph.cache.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from graph import expansion, graph_builder, inputs, progress
from graph.cache import CacheEntry, OutputCache, make_cache
from graph.contract import ExecutionBlocker, InterruptProcessing
from graph.events import Listener, RunEvents
from graph.failures import (Interrupted, NodeFailed, blame, blocked_data, error_data,
                            interrupted_data, node_failures, now_ms)
from graph.node_class import ClassInfo, ClassInfoCache
from graph.outputs import merge_outputs, merge_ui, normalize
from graph.prompt import DynamicPrompt
from graph.scheduler import Scheduler
from graph.signature import SignatureBuilder
from graph.types import sorted_ids
from graph.value_checks import ValueChecks


@dataclass
class ExecutionResult:
    """History-shaped outcome of one prompt (COMPAT §6)."""

    status_str: str
    completed: bool
    outputs: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    error: Optional[dict] = None        # the execution_error / execution_interrupted data
    executed: list = field(default_factory=list)  # node ids finished (run or from cache), in order
    ran: list = field(default_factory=list)       # node ids whose function actually ran

    @property
    def status(self) -> dict:
        return {"status_str": self.status_str, "completed": self.completed, "messages": self.messages}


def _has_future(results: list) -> bool:
    # A plain loop: this runs once per node, and any(<generator>) costs a generator object each time.
    for r in results:
        if isinstance(r, asyncio.Future):
            return True
    return False


class NodeInstances:
    """Node objects kept per (node id, class_type) and reused while the node stays in the prompt."""

    def __init__(self):
        self._objects: dict[tuple, Any] = {}

    def get(self, node_id: str, class_type: str, cls: type):
        key = (node_id, class_type)
        obj = self._objects.get(key)
        if obj is None:
            obj = self._objects[key] = cls()
        return obj

    def clear(self) -> None:
        self._objects.clear()

    def keep_only(self, prompt: dict) -> None:
        """Drop the instances of nodes (and their expansions) no longer in `prompt`."""
        keep = {(nid, node.get("class_type")) for nid, node in prompt.items()}
        for key in list(self._objects):
            root = key[0].split(".", 1)[0]
            if key not in keep and root not in prompt:
                del self._objects[key]


class Executor:
    def __init__(self, registry, cache: Optional[OutputCache] = None):
        self.registry = registry
        self.cache = cache if cache is not None else make_cache("classic")
        self.instances = NodeInstances()
        self.interrupt_event = threading.Event()
        self._busy = threading.Lock()

    def interrupt(self) -> None:
        """Ask the running prompt to stop at the next node start or progress report (thread-safe)."""
        self.interrupt_event.set()

    def reset(self) -> None:
        """Forget cached outputs and node instances (POST /free)."""
        self.cache.clear()
        self.instances.clear()

    def execute(self, prompt: dict, prompt_id: str, extra_data: Optional[dict] = None,
                outputs: Optional[Iterable[str]] = None, listeners: Iterable[Listener] = ()
                ) -> ExecutionResult:
        """Run `outputs` (default: every output node) of an already validated prompt."""
        with self._busy:
            run = _PromptRun(self, prompt, prompt_id, extra_data or {}, outputs, tuple(listeners))
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(run.run())
            # Called from inside an event loop (e.g. a test or the server thread): use our own.
            box: dict = {}
            t = threading.Thread(target=lambda: box.setdefault("r", asyncio.run(run.run())))
            t.start()
            t.join()
            return box["r"]


class _PromptRun:
    """One prompt: the loop over ready nodes, and what happens to one node."""

    def __init__(self, ex: Executor, prompt: dict, prompt_id: str, extra_data: dict,
                 outputs: Optional[Iterable[str]], listeners: tuple):
        self.ex = ex
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra = extra_data
        self.dyn = DynamicPrompt(prompt)
        self.events = RunEvents(prompt_id, self.dyn, listeners)
        self.infos = ClassInfoCache()
        self._info_by_id: dict[str, ClassInfo] = {}
        self.sigs = SignatureBuilder(self.dyn.get_node, self.dyn.has_node, self._class_of,
                                     self.infos, extra_data.get("extra_pnginfo"))
        self.roots = sorted_ids(outputs) if outputs is not None else \
            [n for n in sorted_ids(prompt) if self._info(n).output_node]
        self._root_set = set(self.roots)
        self.sched = Scheduler(self.dyn, self._info, self._from_cache)
        self.checks = ValueChecks(ex.registry)
        self.hidden = inputs.hidden_values(prompt, self.dyn, extra_data)
        self.values: dict[str, list] = {}
        self.ui: dict[str, dict] = {}
        self.ran: list = []
        self.expanded: dict[str, list] = {}  # expanding node -> its results, links unresolved

    def _class_of(self, node_id: str) -> type:
        class_type = self.dyn.get_node(node_id).get("class_type")
        cls = self.ex.registry.get_class(class_type)
        if cls is None:
            raise KeyError(f"node {node_id}: unknown class_type {class_type!r}")
        return cls

    def _info(self, node_id: str) -> ClassInfo:
        info = self._info_by_id.get(node_id)
        if info is None:
            info = self._info_by_id[node_id] = self.infos.get_info(self._class_of(node_id))
        return info

    def _class_type(self, node_id: str) -> str:
        return self.dyn.get_node(node_id).get("class_type")

    # -- the prompt ------------------------------------------------------------------------
    async def run(self) -> ExecutionResult:
        ex, events = self.ex, self.events
        ex.interrupt_event.clear()
        events.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": now_ms()}, True)
        keys = {}
        for nid in self.prompt:
            try:
                keys[nid] = self.sigs.key(nid)
            except Exception:  # an unrunnable node elsewhere in the prompt: it just won't hit
                log.debug("no cache key for node %s", nid, exc_info=True)
        ex.cache.begin_prompt(keys.values())
        if ex.cache.policy == "none":
            ex.instances.clear()
        else:
            ex.instances.keep_only(self.prompt)
        cached = [nid for nid in sorted_ids(keys) if ex.cache.get(keys[nid]) is not None]
        events.emit("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id,
                                         "timestamp": now_ms()}, True)
        status, error = "success", None
        try:
            for root in self.roots:
                self.sched.add(root)
            await self._loop()
            events.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": now_ms()}, True)
        except Interrupted as e:
            status = "error"
            error = interrupted_data(e, self.dyn, self.prompt_id, self.sched.finished)
            events.emit("execution_interrupted", error, True)
        except NodeFailed as e:
            status = "error"
            error = error_data(e, self.dyn, self.prompt_id, self.sched.finished, self.values)
            events.emit("execution_error", error, True)
        finally:
            self.sched.cancel_parked()
            ex.cache.end_prompt()
            ex.interrupt_event.clear()
            progress.clear_last()
        meta = {nid: {"node_id": nid, "display_node": self.dyn.get_display_node_id(nid),
                      "parent_node": self.dyn.get_parent_node_id(nid),
                      "real_node_id": self.dyn.get_real_node_id(nid)} for nid in self.ui}
        return ExecutionResult(status, status == "success", dict(self.ui), events.messages, meta,
                               error, list(self.sched.finished), list(self.ran))

    async def _loop(self) -> None:
        while self.sched.pending:
            nid = self.sched.pop_ready()
            if nid is None:
                if self.sched.has_parked():
                    await self.sched.wait_parked(self.ex.interrupt_event)
                    continue
                raise self.sched.cycle_failure()
            if self.ex.interrupt_event.is_set():
                raise Interrupted(nid)
            await self._execute(nid)

    def _from_cache(self, node_id: str) -> bool:
        """Load a cached node's outputs without visiting it (COMPAT §3.2). Requested output
        nodes are always visited, so their cached UI is re-sent and lands in the history."""
        if node_id in self._root_set:
            return False
        try:
            entry = self.ex.cache.get(self.sigs.key(node_id))
        except Exception:  # no key (e.g. unknown class): it is visited and fails there
            log.debug("no cache key for node %s", node_id, exc_info=True)
            return False
        if entry is None:
            return False
        self.values[node_id] = entry.outputs
        self.sched.done.add(node_id)
        return True

    # -- one node --------------------------------------------------------------------------
    async def _execute(self, node_id: str) -> None:
        info = self._info(node_id)
        key = self.sigs.key(node_id)
        parked = self.sched.unpark(node_id)
        if parked is not None:
            tasks, args = parked
            with node_failures(node_id, args):
                results = [t.result() if isinstance(t, asyncio.Future) else t for t in tasks]
            await self._finish(node_id, info, key, results, args)
            return
        if node_id in self.expanded:
            self._resolve_expansion(node_id, info, key)
            return
        entry = self.ex.cache.get(key)
        if entry is not None:
            self.values[node_id] = entry.outputs
            if entry.ui is not None:
                self.ui[node_id] = entry.ui
                self.events.executed(node_id, entry.ui)
            self.events.state(node_id, "finished", 1, 1)
            self.sched.mark_done(node_id)
            return
        if self.events.listeners:  # (no event data built for nobody: "executing" is not recorded)
            self.events.executing(node_id)
        node = self.dyn.get_node(node_id)
        args = inputs.resolve(node_id, node, info, self.values, self.hidden)
        # try/except rather than `with node_failures(...)`: no object per node on the hot path.
        try:
            obj = self.ex.instances.get(node_id, node["class_type"], info.cls)
            results = await self._call(node_id, info, obj, args)
            if results is None:
                return  # waits for the lazy inputs it asked for
            if _has_future(results):
                if any(isinstance(r, asyncio.Future) and not r.done() for r in results):
                    self.sched.park(node_id, results, args.values)
                    return
                results = [r.result() if isinstance(r, asyncio.Future) else r for r in results]
        except Exception as e:
            raise blame(node_id, e, args.values)
        await self._finish(node_id, info, key, results, args.values)

    async def _call(self, node_id: str, info: ClassInfo, obj, args: inputs.Arguments
                    ) -> Optional[list]:
        """The node's results, or None when check_lazy_status asked for more inputs first."""
        dyn = self.dyn
        run = progress.NodeRun(self.prompt_id, node_id, dyn.get_display_node_id(node_id),
                               dyn.get_parent_node_id(node_id), dyn.get_real_node_id(node_id),
                               self.ex.interrupt_event, self.events.on_progress, self.extra)
        token = progress.bind(run)
        try:
            if hasattr(obj, "check_lazy_status"):
                needed = await self._map(node_id, info, obj, "check_lazy_status", args, block=False)
                # Only unevaluated links can be asked for; anything else is already as it will be.
                names = {n for r in needed if isinstance(r, (list, tuple)) for n in r
                         if isinstance(n, str) and n in args.unevaluated}
                if names:
                    links = {name: up for name, up, _ in dyn.links(node_id)}
                    self.sched.request(node_id, names, links)
                    return None
            return await self._map(node_id, info, obj, info.function_name, args, block=True)
        finally:
            progress.unbind(token)

    async def _map(self, node_id: str, info: ClassInfo, obj, func_name: str,
                   args: inputs.Arguments, block: bool) -> list:
        """Call obj.func_name once per list position (or once with lists, INPUT_IS_LIST)."""
        func = getattr(obj, func_name, None)
        if func is None:
            raise AttributeError(f"{type(obj).__name__} has no method {func_name!r} (its FUNCTION)")
        main = func_name == info.function_name
        results: list = []
        invoked = futures = False
        for index, call in enumerate(inputs.calls(info, args.values)):
            if self.ex.interrupt_event.is_set():
                raise InterruptProcessing("Processing interrupted")
            blocker = inputs.blocker_in(info, call)
            if blocker is not None:
                results.append(self._block(node_id, blocker) if block else blocker)
                continue
            if main:
                self.checks.check(node_id, self._class_type, info, call, args.linked)
            token = graph_builder.set_default_prefix(node_id, index)
            invoked = True
            try:
                r = func(**call)
                if inspect.isawaitable(r):
                    r = asyncio.ensure_future(r)  # the task copies this context (node + prefix)
                    futures = True
            finally:
                graph_builder.reset_default_prefix(token)
            results.append(r)
        if futures:
            await asyncio.sleep(0)  # let tasks that finish immediately finish
            if not block:  # an async check_lazy_status: its answer is needed before going on
                results = [await r if isinstance(r, asyncio.Future) else r for r in results]
        if invoked and main:
            self.ran.append(node_id)
        return results

    def _block(self, node_id: str, blocker: ExecutionBlocker) -> ExecutionBlocker:
        """Report a blocker with a message once, then pass a silent one downstream."""
        if blocker.message is None:
            return blocker
        self.events.emit("execution_error", blocked_data(blocker, node_id, self._class_type(node_id),
                                                         self.prompt_id))
        return ExecutionBlocker(None)

    # -- results ---------------------------------------------------------------------------
    async def _finish(self, node_id: str, info: ClassInfo, key: str, results: list, args: dict):
        try:
            class_type = self._class_type(node_id)
            normalized = [normalize(node_id, class_type, info, r) for r in results]
            ui = merge_ui([u for _r, u, _e in normalized])
            if ui is not None:
                self.ui[node_id] = ui
                self.events.executed(node_id, ui)
            for _r, _u, graph in normalized:
                if graph is not None:
                    self._expand(node_id, normalized)
                    return
        except Exception as e:
            raise blame(node_id, e, args)
        self._store(node_id, key, merge_outputs(info, [r for r, _u, _e in normalized]))

    def _store(self, node_id: str, key: str, outputs: list) -> None:
        self.values[node_id] = outputs
        self.ex.cache.put(key, CacheEntry(outputs, self.ui.get(node_id)))
        self.events.state(node_id, "finished", 1, 1)
        self.sched.mark_done(node_id)

    def _expand(self, node_id: str, normalized: list) -> None:
        new_ids = expansion.add_nodes(self.dyn, node_id, [g for _r, _u, g in normalized])
        self.expanded[node_id] = [r for r, _u, _e in normalized]
        for nid in new_ids:
            self._class_of(nid)  # unknown class_type: fail here, blamed on the expanding node
            if self.sched.is_output(nid):
                self.sched.add(nid)
        self.sched.run_after(node_id, expansion.linked_nodes(self.dyn, self.expanded[node_id]))

    def _resolve_expansion(self, node_id: str, info: ClassInfo, key: str) -> None:
        per_call = expansion.resolve_results(self.expanded.pop(node_id), self.values)
        self._store(node_id, key, merge_outputs(info, per_call))

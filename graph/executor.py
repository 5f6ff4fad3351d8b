"""The executor: runs a validated API prompt (COMPAT §1.2-1.4, §3.2-3.7, §5.2, §6).

Only the requested output nodes and what they need run. Ready nodes are picked by priority
(output or async node, then a node feeding an output, then two hops away, then any), ties broken
by numeric-aware node id, so the order is the same on every run. Node outputs are lists per slot
(one value per call); calls are list-mapped over their inputs. Lazy inputs, blockers, expansion
(with dynamic cycle detection), async nodes and interrupts are handled here; keys and caches live
in graph.signature and graph.cache.
"""
from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import networkx as nx

from graph import graph_builder, progress
from graph.cache import CacheEntry, OutputCache, make_cache
from graph.contract import (DependencyCycleError, DuplicateNodeError, ExecutionBlocker,
                            InterruptProcessing, NodeOutputError)
from graph.node_class import ClassInfo, ClassInfoCache, hidden_kind
from graph.prompt import DynamicPrompt
from graph.signature import SignatureBuilder
from graph.types import is_link, node_id_key, sorted_ids
from graph.validate import full_type_name

log = logging.getLogger(__name__)

Listener = Callable[[str, dict], None]


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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


def _tip(exc: BaseException) -> str:
    """A hint appended to the message of errors users can act on (COMPAT §3.5 adds one for OOM)."""
    if "OutOfMemory" in type(exc).__name__:
        return ("\nThe device ran out of memory. Try a smaller image or batch, tiled VAE nodes, "
                "or free memory (POST /free) and run again.")
    return ""


class _NodeFailed(Exception):
    def __init__(self, node_id: str, exc: BaseException, inputs: Optional[dict]):
        super().__init__(str(exc))
        self.node_id = node_id
        self.exc = exc
        self.inputs = inputs


class _Interrupted(Exception):
    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.node_id = node_id


class _Resolved:
    """A slot value of an expanded node: the whole output list of the linked node."""

    __slots__ = ("values",)

    def __init__(self, values: list):
        self.values = values


class Executor:
    def __init__(self, registry, cache: Optional[OutputCache] = None):
        self.registry = registry
        self.cache = cache if cache is not None else make_cache("classic")
        self._objects: dict[tuple, Any] = {}
        self._interrupt = threading.Event()
        self._busy = threading.Lock()

    def interrupt(self) -> None:
        """Ask the running prompt to stop at the next node start or progress report (thread-safe)."""
        self._interrupt.set()

    def reset(self) -> None:
        """Forget cached outputs and node instances (POST /free)."""
        self.cache.clear()
        self._objects.clear()

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

    def _instance(self, node_id: str, class_type: str, cls: type):
        key = (node_id, class_type)
        obj = self._objects.get(key)
        if obj is None:
            obj = self._objects[key] = cls()
        return obj

    def _forget_instances(self, prompt: dict) -> None:
        if self.cache.policy == "none":
            self._objects.clear()
            return
        keep = {(nid, node.get("class_type")) for nid, node in prompt.items()}
        for key in list(self._objects):
            root = key[0].split(".", 1)[0]
            if key not in keep and root not in prompt:
                del self._objects[key]


class _PromptRun:
    def __init__(self, ex: Executor, prompt: dict, prompt_id: str, extra_data: dict,
                 outputs: Optional[Iterable[str]], listeners: tuple):
        self.ex = ex
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra = extra_data
        self.listeners = listeners
        self.dyn = DynamicPrompt(prompt)
        self.infos = ClassInfoCache()
        self._info_by_id: dict[str, ClassInfo] = {}
        self.sigs = SignatureBuilder(self.dyn.get_node, self.dyn.has_node, self._class_of,
                                     self.infos, extra_data.get("extra_pnginfo"))
        self.roots = sorted_ids(outputs) if outputs is not None else \
            [n for n in sorted_ids(prompt) if self._info(n).output_node]
        self._root_set = set(self.roots)
        self.values: dict[str, list] = {}
        self.ui: dict[str, dict] = {}
        self.messages: list = []
        self.executed: list = []
        self.ran: list = []
        self.states: dict[str, dict] = {}
        self.pending: set = set()
        self.done: set = set()
        self.deps: dict[str, set] = {}
        self.consumers: dict[str, set] = {}
        self.requested: dict[str, set] = {}
        self.ready: list = []
        self.async_waiting: dict[str, tuple] = {}
        self.subgraph_pending: dict[str, list] = {}

    # -- lookups -------------------------------------------------------------------------
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

    # -- events --------------------------------------------------------------------------
    def emit(self, event: str, data: dict, record: bool = False) -> None:
        if record:
            self.messages.append([event, data])
        for listener in self.listeners:
            try:
                listener(event, data)
            except Exception:  # a broken listener must not break the prompt
                log.exception("event listener failed on %s", event)

    def _node_ids(self, node_id: str) -> dict:
        return {"node_id": node_id, "prompt_id": self.prompt_id,
                "display_node_id": self.dyn.get_display_node_id(node_id),
                "parent_node_id": self.dyn.get_parent_node_id(node_id),
                "real_node_id": self.dyn.get_real_node_id(node_id)}

    def _set_state(self, node_id: str, state: str, value: float = 0, max_: float = 1) -> None:
        if not self.listeners:
            return
        entry = self.states.get(node_id)
        if entry is None:
            entry = self.states[node_id] = self._node_ids(node_id)
        entry.update(value=value, max=max_, state=state)
        self.emit("progress_state", {"prompt_id": self.prompt_id,
                                     "nodes": {k: dict(v) for k, v in self.states.items()}})

    def _on_progress(self, run: progress.NodeRun, value: int, total: int, preview) -> None:
        self._set_state(run.node_id, "running", value, total)
        if preview is not None:
            self.emit("preview", {"prompt_id": self.prompt_id, "node_id": run.node_id,
                                  "display_node_id": run.display_node_id,
                                  "parent_node_id": run.parent_node_id,
                                  "real_node_id": run.real_node_id, "image": preview})
        self.emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id,
                               "node": run.display_node_id})

    # -- the prompt ------------------------------------------------------------------------
    async def run(self) -> ExecutionResult:
        ex = self.ex
        ex._interrupt.clear()
        self.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": _now_ms()}, True)
        keys = {}
        for nid in self.prompt:
            try:
                keys[nid] = self.sigs.key(nid)
            except Exception:  # an unrunnable node elsewhere in the prompt: it just won't hit
                log.debug("no cache key for node %s", nid, exc_info=True)
        ex.cache.begin_prompt(keys.values())
        ex._forget_instances(self.prompt)
        cached = [nid for nid in sorted_ids(keys) if ex.cache.get(keys[nid]) is not None]
        self.emit("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id,
                                       "timestamp": _now_ms()}, True)
        status, error = "success", None
        try:
            for root in self.roots:
                self._add_node(root)
            await self._loop()
            self.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": _now_ms()}, True)
        except _Interrupted as e:
            status = "error"
            error = {"prompt_id": self.prompt_id, "node_id": self.dyn.get_real_node_id(e.node_id),
                     "node_type": self.dyn.get_node(e.node_id).get("class_type"),
                     "executed": list(self.executed), "timestamp": _now_ms()}
            self.emit("execution_interrupted", error, True)
        except _NodeFailed as e:
            status = "error"
            error = self._error_data(e)
            self.emit("execution_error", error, True)
        finally:
            for tasks, _inputs in self.async_waiting.values():
                for t in tasks:
                    if isinstance(t, asyncio.Future) and not t.done():
                        t.cancel()
            ex.cache.end_prompt()
            ex._interrupt.clear()
            progress.clear_last()
        meta = {nid: {"node_id": nid, "display_node": self.dyn.get_display_node_id(nid),
                      "parent_node": self.dyn.get_parent_node_id(nid),
                      "real_node_id": self.dyn.get_real_node_id(nid)} for nid in self.ui}
        return ExecutionResult(status, status == "success", dict(self.ui), self.messages, meta,
                               error, list(self.executed), list(self.ran))

    def _error_data(self, e: _NodeFailed) -> dict:
        exc = e.exc
        node = self.dyn.get_node(e.node_id) if self.dyn.has_node(e.node_id) else {}
        inputs = {}
        for name, values in (e.inputs or {}).items():
            inputs[name] = [_format_value(v) for v in values] if isinstance(values, list) \
                else _format_value(values)
        return {"prompt_id": self.prompt_id, "node_id": self.dyn.get_real_node_id(e.node_id),
                "node_type": node.get("class_type"), "executed": list(self.executed),
                "exception_message": str(exc) + _tip(exc), "exception_type": full_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__), "current_inputs": inputs,
                "current_outputs": sorted_ids(self.values), "timestamp": _now_ms()}

    # -- scheduling ------------------------------------------------------------------------
    def _lazy(self, info: ClassInfo, name: str) -> bool:
        decl = info.declared(name)
        return decl is not None and bool(decl[2].get("lazy"))

    def _from_cache(self, node_id: str) -> bool:
        """Load a cached node's outputs without visiting it (COMPAT §3.2). Requested output
        nodes are always visited, so their cached UI is re-sent and lands in the history."""
        if node_id in self._root_set:
            return False
        try:
            entry = self.ex.cache.get(self.sigs.key(node_id))
        except Exception:
            return False
        if entry is None:
            return False
        self.values[node_id] = entry.outputs
        self.done.add(node_id)
        return True

    def _add_node(self, node_id: str) -> None:
        """Schedule node_id and every not-yet-available upstream it needs (iteratively)."""
        stack = [node_id]
        while stack:
            nid = stack.pop()
            if nid in self.pending or nid in self.done:
                continue
            self.pending.add(nid)
            deps = self.deps.setdefault(nid, set())
            try:
                info = self._info(nid)
            except Exception as e:
                raise _NodeFailed(nid, e, None)
            wanted = self.requested.get(nid, ())
            for name, up, _slot in self.dyn.links(nid):
                if self._lazy(info, name) and name not in wanted:
                    continue
                if up in self.done or not self.dyn.has_node(up):
                    continue
                if up not in self.pending and self._from_cache(up):
                    continue
                deps.add(up)
                self.consumers.setdefault(up, set()).add(nid)
                if up not in self.pending:
                    stack.append(up)
            if not deps:
                self._push_ready(nid)

    def _push_ready(self, node_id: str) -> None:
        heapq.heappush(self.ready, (self._priority(node_id), node_id_key(node_id), node_id))

    def _is_output(self, node_id: str) -> bool:
        try:
            return self._info(node_id).output_node
        except Exception:
            return False

    def _priority(self, node_id: str) -> int:
        try:
            info = self._info(node_id)
        except Exception:
            return 0
        if info.output_node or info.is_async:
            return 0
        near = self.consumers.get(node_id, ())
        if any(self._is_output(c) for c in near):
            return 1
        if any(self._is_output(cc) for c in near for cc in self.consumers.get(c, ())):
            return 2
        return 3

    def _pop_ready(self) -> Optional[str]:
        while self.ready:
            _p, _k, nid = heapq.heappop(self.ready)
            if nid in self.pending and not self.deps.get(nid) and self._tasks_done(nid):
                return nid
        return None

    def _depend(self, node_id: str, up: str) -> None:
        """Make node_id wait for `up` (a lazy input asked for, or an expansion result)."""
        if up in self.done:
            return
        if up not in self.pending and self._from_cache(up):
            return
        self.deps.setdefault(node_id, set()).add(up)
        self.consumers.setdefault(up, set()).add(node_id)
        self._add_node(up)

    def _mark_done(self, node_id: str) -> None:
        self.pending.discard(node_id)
        self.done.add(node_id)
        self.executed.append(node_id)
        for c in self.consumers.pop(node_id, ()):
            deps = self.deps.get(c)
            if deps is not None:
                deps.discard(node_id)
                if not deps and c not in self.async_waiting and c in self.pending:
                    self._push_ready(c)

    async def _loop(self) -> None:
        while self.pending:
            nid = self._pop_ready()
            if nid is None:
                if self.async_waiting:
                    await self._wait_async()
                    continue
                self._raise_cycle()
            if self.ex._interrupt.is_set():
                raise _Interrupted(nid)
            await self._execute(nid)

    def _tasks_done(self, node_id: str) -> bool:
        waiting = self.async_waiting.get(node_id)
        return waiting is None or all(
            not isinstance(t, asyncio.Future) or t.done() for t in waiting[0])

    async def _wait_async(self) -> None:
        """Nothing else to do: wait until some async node's calls have all finished."""
        while True:
            finished = [nid for nid in self.async_waiting if self._tasks_done(nid)]
            if finished:
                for nid in finished:
                    self._push_ready(nid)  # collected by _execute, which pops async_waiting
                return
            if self.ex._interrupt.is_set():
                raise _Interrupted(sorted_ids(self.async_waiting)[0])
            futures = [t for tasks, _ in self.async_waiting.values() for t in tasks
                       if isinstance(t, asyncio.Future) and not t.done()]
            # Wake up now and then to honour an interrupt while only async nodes are running.
            await asyncio.wait(futures, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)

    def _raise_cycle(self) -> None:
        g = nx.DiGraph()
        for nid in self.pending:
            for up in self.deps.get(nid, ()):
                g.add_edge(up, nid)
        try:
            cycle = [u for u, _v in nx.find_cycle(g)]
        except nx.NetworkXNoCycle:
            cycle = sorted_ids(self.pending)
        blame = sorted_ids(cycle)[0]
        path = " -> ".join(cycle + cycle[:1])
        raise _NodeFailed(blame, DependencyCycleError(f"Dependency cycle detected: {path}"), None)

    # -- one node --------------------------------------------------------------------------
    async def _execute(self, node_id: str) -> None:
        node = self.dyn.get_node(node_id)
        info = self._info(node_id)
        key = self.sigs.key(node_id)
        if node_id in self.async_waiting:
            tasks, inputs = self.async_waiting.pop(node_id)
            try:
                results = [t.result() if isinstance(t, asyncio.Future) else t for t in tasks]
            except InterruptProcessing:
                raise _Interrupted(node_id)
            except Exception as e:
                raise _NodeFailed(node_id, e, inputs)
            await self._finish(node_id, info, key, results, inputs)
            return
        if node_id in self.subgraph_pending:
            self._resolve_expansion(node_id, info, key)
            return
        entry = self.ex.cache.get(key)
        if entry is not None:
            self.values[node_id] = entry.outputs
            if entry.ui is not None:
                self.ui[node_id] = entry.ui
                self.emit("executed", {"node": node_id,
                                       "display_node": self.dyn.get_display_node_id(node_id),
                                       "output": entry.ui, "prompt_id": self.prompt_id})
            self._set_state(node_id, "finished", 1, 1)
            self._mark_done(node_id)
            return

        display = self.dyn.get_display_node_id(node_id)
        self._set_state(node_id, "running", 0, 1)
        self.emit("executing", {"node": node_id, "display_node": display, "prompt_id": self.prompt_id})
        inputs, missing = self._inputs(node_id, node, info)
        run = progress.NodeRun(self.prompt_id, node_id, display, self.dyn.get_parent_node_id(node_id),
                               self.dyn.get_real_node_id(node_id), self.ex._interrupt,
                               self._on_progress, self.extra)
        token = progress.bind(run)
        try:
            obj = self.ex._instance(node_id, node["class_type"], info.cls)
            if hasattr(obj, "check_lazy_status"):
                needed = await self._map(node_id, info, obj, "check_lazy_status", inputs, block=False)
                # Only unevaluated links can be asked for; anything else is already as it will be.
                names = {n for r in needed if isinstance(r, (list, tuple)) for n in r
                         if isinstance(n, str) and n in missing}
                if names:
                    links = dict((name, up) for name, up, _ in self.dyn.links(node_id))
                    self.requested.setdefault(node_id, set()).update(names)
                    for name in sorted(names):
                        if name in links:
                            self._depend(node_id, links[name])
                    if not self.deps.get(node_id):
                        self._push_ready(node_id)  # everything asked for was already cached
                    return
            results = await self._map(node_id, info, obj, info.function_name, inputs, block=True)
        except _Interrupted:
            raise
        except InterruptProcessing:
            raise _Interrupted(node_id)
        except _NodeFailed:
            raise
        except Exception as e:
            raise _NodeFailed(node_id, e, inputs)
        finally:
            progress.unbind(token)
        if any(isinstance(r, asyncio.Future) and not r.done() for r in results):
            self.async_waiting[node_id] = (results, inputs)
            return
        try:
            results = [r.result() if isinstance(r, asyncio.Future) else r for r in results]
        except InterruptProcessing:
            raise _Interrupted(node_id)
        except Exception as e:
            raise _NodeFailed(node_id, e, inputs)
        await self._finish(node_id, info, key, results, inputs)

    def _inputs(self, node_id: str, node: dict, info: ClassInfo) -> tuple[dict, set]:
        """Every argument as a list of values (COMPAT §1.2); also the unevaluated link names."""
        args: dict = {}
        missing: set = set()
        for name, value in (node.get("inputs") or {}).items():
            decl = info.declared(name)
            if is_link(value):
                if decl is not None and decl[2].get("rawLink"):
                    args[name] = [value]
                    continue
                up_values = self.values.get(value[0])
                if up_values is None:
                    args[name] = [None]
                    missing.add(name)
                else:
                    slot = int(value[1])
                    args[name] = up_values[slot] if slot < len(up_values) else [None]
            elif decl is not None:
                if isinstance(value, dict) and "__value__" in value:
                    value = value["__value__"]
                args[name] = [value]
        for name, kind in info.hidden.items():
            kind = hidden_kind(kind)
            if kind == "PROMPT":
                args[name] = [self.prompt]
            elif kind == "DYNPROMPT":
                args[name] = [self.dyn]
            elif kind == "EXTRA_PNGINFO":
                args[name] = [self.extra.get("extra_pnginfo")]
            elif kind == "UNIQUE_ID":
                args[name] = [node_id]
            elif kind == "AUTH_TOKEN_COMFY_ORG":
                args[name] = [self.extra.get("auth_token_comfy_org")]
            elif kind == "API_KEY_COMFY_ORG":
                args[name] = [self.extra.get("api_key_comfy_org")]
        return args, missing

    def _block(self, node_id: str, blocker: ExecutionBlocker) -> ExecutionBlocker:
        """Report a blocker with a message once, then pass a silent one downstream."""
        if blocker.message is None:
            return blocker
        self.emit("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node_id,
            "node_type": self.dyn.get_node(node_id).get("class_type"), "executed": [],
            "exception_message": f"Execution Blocked: {blocker.message}",
            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
            "current_outputs": []})
        return ExecutionBlocker(None)

    async def _map(self, node_id: str, info: ClassInfo, obj, func_name: str, args: dict,
                   block: bool) -> list:
        """Call obj.func_name once per list position (or once with lists, INPUT_IS_LIST)."""
        func = getattr(obj, func_name, None)
        if func is None:
            raise AttributeError(f"{type(obj).__name__} has no method {func_name!r} (its FUNCTION)")
        if info.input_is_list:
            calls = [args]
        else:
            n = max((len(v) for v in args.values()), default=0)
            calls = [{k: (v[i] if i < len(v) else v[-1]) for k, v in args.items() if v}
                     for i in range(n)] or [{}]
        results: list = []
        invoked = False
        for index, call in enumerate(calls):
            if self.ex._interrupt.is_set():
                raise InterruptProcessing("Processing interrupted")
            blocker = None
            for v in call.values():
                if info.input_is_list and isinstance(v, list):
                    v = next((e for e in v if isinstance(e, ExecutionBlocker)), v)
                if isinstance(v, ExecutionBlocker):
                    blocker = v
                    break
            if blocker is not None:
                results.append(self._block(node_id, blocker) if block else blocker)
                continue
            token = graph_builder.set_default_prefix(node_id, index)
            invoked = True
            try:
                r = func(**call)
                if inspect.isawaitable(r):
                    r = asyncio.ensure_future(r)  # the task copies this context (node + prefix)
            finally:
                graph_builder.reset_default_prefix(token)
            results.append(r)
        if any(isinstance(r, asyncio.Future) for r in results):
            await asyncio.sleep(0)  # let tasks that finish immediately finish
            if not block:  # an async check_lazy_status: its answer is needed before going on
                results = [await r if isinstance(r, asyncio.Future) else r for r in results]
        if invoked and func_name == info.function_name:
            self.ran.append(node_id)
        return results

    # -- results ---------------------------------------------------------------------------
    def _normalize(self, node_id: str, info: ClassInfo, r: Any) -> tuple:
        """(outputs tuple, ui dict | None, expand graph | None) from one call's return value."""
        n = len(info.return_types)
        if isinstance(r, ExecutionBlocker):
            return (r,) * n, None, None
        if isinstance(r, dict):
            ui = r.get("ui")
            expand = r.get("expand")
            result = r.get("result", (None,) * n)
            if isinstance(result, ExecutionBlocker):
                result = (result,) * n
            return tuple(result), ui, expand
        if isinstance(r, (tuple, list)):
            if len(r) < n:
                raise NodeOutputError(
                    f"node {node_id} ({self.dyn.get_node(node_id)['class_type']}) returned "
                    f"{len(r)} values but declares {n} outputs {list(info.return_types)}")
            return tuple(r), None, None
        raise NodeOutputError(
            f"node {node_id} ({self.dyn.get_node(node_id)['class_type']}) returned "
            f"{type(r).__name__}; a node function must return a tuple (one value per output), "
            f"a dict with 'result'/'ui'/'expand', or an ExecutionBlocker")

    def _merge(self, info: ClassInfo, per_call: list) -> list:
        """Per slot: one value per call, or the concatenation for OUTPUT_IS_LIST (COMPAT §1.2.4)."""
        outputs = []
        for slot, is_list in enumerate(info.output_is_list):
            merged: list = []
            for result in per_call:
                v = result[slot] if slot < len(result) else None
                if isinstance(v, _Resolved):
                    merged.extend(v.values)
                elif is_list and not isinstance(v, ExecutionBlocker):
                    merged.extend(v)
                else:
                    merged.append(v)
            outputs.append(merged)
        return outputs

    @staticmethod
    def _merge_ui(uis: list) -> Optional[dict]:
        uis = [u for u in uis if u is not None]
        if not uis or not uis[0]:  # an empty ui is no ui: no `executed`, no history entry
            return None
        first = uis[0]
        merged = {}
        for k in first:
            merged[k] = [x for u in uis for x in (u.get(k) or [])] \
                if isinstance(first[k], (list, tuple)) else first[k]
        return merged

    async def _finish(self, node_id: str, info: ClassInfo, key: str, results: list, inputs: dict):
        try:
            normalized = [self._normalize(node_id, info, r) for r in results]
        except NodeOutputError as e:
            raise _NodeFailed(node_id, e, inputs)
        ui = self._merge_ui([u for _r, u, _e in normalized])
        if ui is not None:
            self.ui[node_id] = ui
            self.emit("executed", {"node": node_id,
                                   "display_node": self.dyn.get_display_node_id(node_id),
                                   "output": ui, "prompt_id": self.prompt_id})
        if any(e is not None for _r, _u, e in normalized):
            try:
                self._expand(node_id, normalized)
            except _NodeFailed:
                raise
            except Exception as e:
                raise _NodeFailed(node_id, e, inputs)
            return
        self._store(node_id, key, self._merge(info, [r for r, _u, _e in normalized]))

    def _store(self, node_id: str, key: str, outputs: list) -> None:
        self.values[node_id] = outputs
        self.ex.cache.put(key, CacheEntry(outputs, self.ui.get(node_id)))
        self._set_state(node_id, "finished", 1, 1)
        self._mark_done(node_id)

    def _expand(self, node_id: str, normalized: list) -> None:
        new_ids: list = []
        for _r, _u, graph in normalized:
            if graph is None:
                continue
            if not isinstance(graph, dict):
                raise NodeOutputError(f"node {node_id}: 'expand' must be an API-format dict of nodes")
            for nid, spec in graph.items():
                if self.dyn.has_node(nid):
                    raise DuplicateNodeError(
                        f"node {node_id} expanded into node id {nid!r}, which already exists; "
                        f"use GraphBuilder for unique ids")
                if not isinstance(spec, dict) or "class_type" not in spec:
                    raise NodeOutputError(f"node {node_id}: expanded node {nid!r} has no class_type")
                display = spec.get("override_display_id", node_id)
                self.dyn.add_ephemeral_node(nid, spec, node_id, display)
                new_ids.append(nid)
        self.subgraph_pending[node_id] = [r for r, _u, _e in normalized]
        for nid in sorted_ids(new_ids):
            self._class_of(nid)  # unknown class_type: fail here, blamed on the expanding node
            if self._is_output(nid):
                self._add_node(nid)
        for result in self.subgraph_pending[node_id]:
            for v in result:
                if is_link(v) and self.dyn.has_node(v[0]):
                    self._depend(node_id, v[0])
        if not self.deps.get(node_id):
            self._push_ready(node_id)

    def _resolve_expansion(self, node_id: str, info: ClassInfo, key: str) -> None:
        per_call = []
        for result in self.subgraph_pending.pop(node_id):
            resolved = []
            for v in result:
                if is_link(v) and v[0] in self.values:
                    outs = self.values[v[0]]
                    slot = int(v[1])
                    resolved.append(_Resolved(outs[slot] if slot < len(outs) else [None]))
                else:
                    resolved.append(v)
            per_call.append(tuple(resolved))
        self._store(node_id, key, self._merge(info, per_call))

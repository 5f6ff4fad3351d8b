"""Which node runs next: dependencies, the ready queue, and nodes waiting on async calls.

Ready nodes are picked by priority (output or async node, then a node feeding an output, then
two hops away, then any), ties broken by numeric-aware node id, so the order is the same on every
run. Nodes are added with what they need as the run discovers it (lazy inputs, expansion).
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import threading
from typing import Callable, Iterable, Optional

from graph.contract import DependencyCycleError
from graph.failures import Interrupted, NodeFailed, blame
from graph.node_class import ClassInfo
from graph.ordering import cycle_path, find_cycles
from graph.prompt import DynamicPrompt
from graph.types import node_id_key, sorted_ids

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, dyn: DynamicPrompt, info: Callable[[str], ClassInfo],
                 load_cached: Callable[[str], bool]):
        self.dyn = dyn
        self._info = info
        self._load_cached = load_cached  # True when a node's outputs came from the cache
        self.pending: set = set()
        self.done: set = set()
        self.finished: list = []     # node ids in the order they finished
        self._deps: dict[str, set] = {}
        self._consumers: dict[str, set] = {}
        self._requested: dict[str, set] = {}  # lazy inputs check_lazy_status asked for
        self._ready: list = []
        self._parked: dict[str, tuple] = {}   # node id -> (its calls' results, its inputs)
        self._outputs: dict[str, bool] = {}   # node id -> is an output node (asked per consumer)

    # -- adding work -----------------------------------------------------------------------
    def add(self, node_id: str) -> None:
        """Schedule node_id and every not-yet-available upstream it needs (iteratively)."""
        stack = [node_id]
        while stack:
            nid = stack.pop()
            if nid in self.pending or nid in self.done:
                continue
            self.pending.add(nid)
            deps = self._deps.setdefault(nid, set())
            try:
                info = self._info(nid)
            except Exception as e:
                raise blame(nid, e)
            wanted = self._requested.get(nid, ())
            for name, up, _slot in self.dyn.links(nid):
                decl = info.declared(name)
                if decl is not None and decl[2].get("lazy") and name not in wanted:
                    continue
                if up in self.done or not self.dyn.has_node(up):
                    continue
                if up not in self.pending and self._load_cached(up):
                    continue
                deps.add(up)
                self._consumers.setdefault(up, set()).add(nid)
                if up not in self.pending:
                    stack.append(up)
            if not deps:
                self.push_ready(nid)

    def request(self, node_id: str, names: set, links: dict) -> None:
        """check_lazy_status asked for the lazy inputs `names` (links: name -> upstream id)."""
        self._requested.setdefault(node_id, set()).update(names)
        self.run_after(node_id, [links[name] for name in sorted(names) if name in links])

    def run_after(self, node_id: str, ups: Iterable[str]) -> None:
        """Run node_id (again) once every node in `ups` is done."""
        for up in ups:
            self._depend(node_id, up)
        if not self._deps.get(node_id):
            self.push_ready(node_id)  # everything needed was already there

    def _depend(self, node_id: str, up: str) -> None:
        if up in self.done:
            return
        if up not in self.pending and self._load_cached(up):
            return
        self._deps.setdefault(node_id, set()).add(up)
        self._consumers.setdefault(up, set()).add(node_id)
        self.add(up)

    # -- the ready queue -------------------------------------------------------------------
    def push_ready(self, node_id: str) -> None:
        heapq.heappush(self._ready, (self._priority(node_id), node_id_key(node_id), node_id))

    def _info_or_none(self, node_id: str) -> Optional[ClassInfo]:
        try:
            return self._info(node_id)
        except Exception:  # add() reports it, blamed on the node, when the node is scheduled
            log.debug("no class info for node %s yet", node_id, exc_info=True)
            return None

    def is_output(self, node_id: str) -> bool:
        found = self._outputs.get(node_id)
        if found is None:
            info = self._info_or_none(node_id)
            found = self._outputs[node_id] = info is not None and bool(info.output_node)
        return found

    def _priority(self, node_id: str) -> int:
        info = self._info_or_none(node_id)
        if info is None:
            return 0
        if info.output_node or info.is_async:
            return 0
        near = self._consumers.get(node_id, ())
        for c in near:  # plain loops: this runs for every node
            if self.is_output(c):
                return 1
        for c in near:
            for cc in self._consumers.get(c, ()):
                if self.is_output(cc):
                    return 2
        return 3

    def pop_ready(self) -> Optional[str]:
        while self._ready:
            _p, _k, nid = heapq.heappop(self._ready)
            if nid in self.pending and not self._deps.get(nid) and self._calls_done(nid):
                return nid
        return None

    def mark_done(self, node_id: str) -> None:
        self.pending.discard(node_id)
        self.done.add(node_id)
        self.finished.append(node_id)
        for c in self._consumers.pop(node_id, ()):
            deps = self._deps.get(c)
            if deps is not None:
                deps.discard(node_id)
                if not deps and c not in self._parked and c in self.pending:
                    self.push_ready(c)

    def cycle_failure(self) -> NodeFailed:
        """Nothing is ready yet work is pending: the pending nodes wait on each other."""
        edges = [(up, nid) for nid in self.pending for up in self._deps.get(nid, ())]
        cycles = find_cycles(edges)
        cycle = cycles[0] if cycles else sorted_ids(self.pending)
        blame = sorted_ids(cycle)[0]
        return NodeFailed(blame, DependencyCycleError(f"Dependency cycle detected: "
                                                      f"{cycle_path(cycle)}"), None)

    # -- nodes waiting on their async calls ------------------------------------------------
    def park(self, node_id: str, results: list, inputs: dict) -> None:
        self._parked[node_id] = (results, inputs)

    def unpark(self, node_id: str) -> Optional[tuple]:
        """(results, inputs) of a parked node, now finished, or None if it was not parked."""
        return self._parked.pop(node_id, None)

    def _calls_done(self, node_id: str) -> bool:
        waiting = self._parked.get(node_id)
        return waiting is None or all(
            not isinstance(t, asyncio.Future) or t.done() for t in waiting[0])

    def has_parked(self) -> bool:
        return bool(self._parked)

    async def wait_parked(self, interrupt: threading.Event) -> None:
        """Nothing else to do: wait until some parked node's calls have all finished."""
        while True:
            finished = [nid for nid in self._parked if self._calls_done(nid)]
            if finished:
                for nid in finished:
                    self.push_ready(nid)  # the run collects its results when it pops it
                return
            if interrupt.is_set():
                raise Interrupted(sorted_ids(self._parked)[0])
            futures = [t for tasks, _ in self._parked.values() for t in tasks
                       if isinstance(t, asyncio.Future) and not t.done()]
            # Wake up now and then to honour an interrupt while only async nodes are running.
            await asyncio.wait(futures, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)

    def cancel_parked(self) -> None:
        for tasks, _inputs in self._parked.values():
            for t in tasks:
                if isinstance(t, asyncio.Future) and not t.done():
                    t.cancel()

"""Ordering and cycle reporting, shared by validation and the executor.

Both see the graph as edges upstream -> downstream between node ids; a cycle is reported as its
node ids in link order, starting at the smallest id, so the same graph always gives the same text.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable

import networkx as nx

from graph.types import node_id_key, sorted_ids


def topological_order(ups: dict[str, list]) -> tuple[list, list]:
    """(order, leftover) for {node: [upstream ids]} (Kahn's algorithm, iterative).

    `order` lists each node after all its upstreams; `leftover` holds the nodes that sit on or
    after a cycle, in the order of `ups`.
    """
    downstream: dict[str, list] = {n: [] for n in ups}
    waiting = {}
    for nid, us in ups.items():
        waiting[nid] = len(us)
        for u in us:
            downstream[u].append(nid)
    order = []
    ready = deque(n for n, k in waiting.items() if k == 0)
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for d in downstream[nid]:
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)
    placed = set(order)
    return order, [n for n in ups if n not in placed]


def find_cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Every real cycle among (upstream, downstream) edges, one per strongly connected component."""
    g = nx.DiGraph()
    g.add_edges_from(sorted(edges, key=lambda e: (node_id_key(e[1]), node_id_key(e[0]))))
    cycles = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) == 1:
            (only,) = comp
            if not g.has_edge(only, only):
                continue
        cycle = [u for u, _v in nx.find_cycle(g.subgraph(comp))]
        start = cycle.index(sorted_ids(cycle)[0])
        cycles.append(cycle[start:] + cycle[:start])
    return sorted(cycles, key=lambda c: node_id_key(c[0]))


def cycle_path(cycle: list) -> str:
    """"a -> b -> a": a cycle as users read it in error messages."""
    return " -> ".join(cycle + cycle[:1])

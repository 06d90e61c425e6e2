"""Lineage: which job a regeneration or variation came from, and what came from it.

Jobs link to their parent through ``jobs.parent_id`` (indexed since migration 0003). A
lineage is the chain of ancestors up to the root plus the tree of everything below that
root, read breadth first one level per query, and capped so that a huge family (or a
corrupt cycle from a crafted import) cannot stall a command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.db import Database, Job
from studio.gallery.query import locate

MAX_NODES = 500


@dataclass
class Node:
    job_id: str
    prompt: str
    model_id: str
    status: str
    seed: int
    count: int
    params: dict[str, Any]  # as stored with the job
    parent_id: str | None
    children: list["Node"] = field(default_factory=list)
    #: what the stored params leave out and mean (``Param.unset_means``): made with, never stored
    implied: dict[str, Any] = field(default_factory=dict)

    @property
    def effective(self) -> dict[str, Any]:
        return {**self.implied, **self.params}

    def changes_from(self, parent: "Node | None") -> list[str]:
        """What differs from the parent besides the seed: the parameters, prompt or model changed."""
        if parent is None:
            return []
        changed = []
        mine, theirs = self.effective, parent.effective
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                changed.append(f"{key}={mine.get(key)}")
        if self.prompt != parent.prompt:
            changed.append("prompt")
        if self.model_id != parent.model_id:
            changed.append(f"model {self.model_id}")
        return changed

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "prompt": self.prompt,
            "model": self.model_id,
            "status": self.status,
            "seed": self.seed,
            "count": self.count,
            "params": self.params,
            "implied_params": self.implied,
            "parent_id": self.parent_id,
            "children": [c.as_dict() for c in self.children],
        }


@dataclass
class Lineage:
    root: Node
    focus: str  # the job asked about
    truncated: bool  # more than MAX_NODES descendants; the rest is left out

    @property
    def size(self) -> int:
        stack, n = [self.root], 0
        while stack:
            node = stack.pop()
            n += 1
            stack.extend(node.children)
        return n

    def as_dict(self) -> dict[str, Any]:
        return {"focus": self.focus, "truncated": self.truncated, "root": self.root.as_dict()}


UnsetValues = Callable[[str], dict[str, Any]]


def unset_values_of(registry) -> UnsetValues:
    """model id -> the values its recipes mean by leaving a parameter out (``Param.unset_means``).

    A recipe omits a parameter at that value, so without these a child made with
    ``cpu_kernels=exact`` under a ``fast`` parent would read as ``cpu_kernels=None``.
    """
    from studio.errors import UnknownModel

    known: dict[str, dict[str, Any]] = {}

    def values(model_id: str) -> dict[str, Any]:
        if model_id not in known:
            try:
                params = registry.model(model_id).params
            except UnknownModel:
                params = ()
            known[model_id] = {p.name: p.unset_means for p in params if p.unset_means is not None}
        return known[model_id]

    return values


def _node(job: Job, unset: UnsetValues | None = None) -> Node:
    params = dict(job.params or {})
    implied = {k: v for k, v in (unset(job.model_id) if unset else {}).items() if k not in params}
    return Node(job.id, job.prompt, job.model_id, job.status, job.seed, job.count, params, job.parent_id,
                implied=implied)


def _root(session: Session, job: Job) -> Job:
    seen = {job.id}
    while job.parent_id and job.parent_id not in seen and len(seen) < MAX_NODES:
        parent = session.get(Job, job.parent_id)
        if parent is None:
            break
        seen.add(parent.id)
        job = parent
    return job


def lineage(db: Database, ident: str, unset: UnsetValues | None = None) -> Lineage:
    """The family of the job ``ident`` names (an image id names its job); ``unset`` (see
    :func:`unset_values_of`) fills the parameters each recipe leaves out."""
    with db.session() as session:
        job, _image = locate(session, ident)
        root = _node(_root(session, job), unset)
        nodes = {root.job_id: root}
        level, truncated = [root], False
        while level and not truncated:
            ids = [n.job_id for n in level]
            children = session.scalars(
                select(Job).where(Job.parent_id.in_(ids)).order_by(Job.id).limit(MAX_NODES + 1)
            ).all()
            level = []
            for child in children:
                if child.id in nodes:
                    continue  # a cycle: only possible in crafted data
                if len(nodes) >= MAX_NODES:
                    truncated = True
                    break
                node = _node(child, unset)
                nodes[child.id] = node
                nodes[child.parent_id].children.append(node)
                level.append(node)
        return Lineage(root=root, focus=job.id, truncated=truncated)


def rich_tree(family: Lineage, label: Callable[[Node, Node | None], str]):
    """The family as a ``rich`` tree; ``label(node, parent)`` writes each line (parent None at the root)."""
    from rich.tree import Tree

    tree = Tree(label(family.root, None))
    stack = [(family.root, tree)]
    while stack:
        node, branch = stack.pop()
        for child in node.children:
            stack.append((child, branch.add(label(child, node))))
    return tree

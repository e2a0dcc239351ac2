"""The task registry: name -> :class:`~.base.Task`. Everything that branches on a task looks it up here."""

from __future__ import annotations

from .base import Task

__all__ = ["TASKS", "register_task", "task_named", "task_names"]

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (a second task of the same name is refused)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def task_named(name: str) -> Task:
    """The registered task ``name``; ValueError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task {name!r}: expected one of {', '.join(TASKS)}") from None


def task_names(*, needs_labels: bool | None = None) -> tuple[str, ...]:
    """Registered task names, in registration order; ``needs_labels=False``: those a bare base model can run."""
    return tuple(n for n, t in TASKS.items() if needs_labels is None or t.needs_labels == needs_labels)

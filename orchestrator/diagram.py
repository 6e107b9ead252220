"""Workflow graphs as Graphviz DOT, rendered in the browser by viz.js."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.dsl import Decision, Human, Parallel, Timer, Workflow

# Fill colours per step state (the same palette as the state badges in baton.css).
FILL = {
    "scheduled": "#cfe2ff",
    "running": "#9ec5fe",
    "succeeded": "#d1e7dd",
    "failed": "#fff3cd",
    "dead": "#f8d7da",
    "skipped": "#e9ecef",
    "compensated": "#e2d9f3",
    "pending": "#ffffff",
}
SHAPE = {"task": "box", "human": "box", "timer": "circle", "decision": "diamond", "parallel": "box", "signal": "cds"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def workflow_dot(workflow: Workflow, states: Mapping[str, str] | None = None) -> str:
    """DOT for the definition; nodes take the colour of their latest run's state when ``states`` (node name ->
    step state) says, and a ``step-<state>`` class in the SVG. Raises nothing."""
    states = states or {}
    lines = [
        "digraph workflow {",
        '  graph [rankdir=LR, fontname="Helvetica", bgcolor="transparent", nodesep=0.35, ranksep=0.45];',
        '  node [fontname="Helvetica", fontsize=11, style="rounded,filled", fillcolor="#ffffff", color="#6c757d"];',
        '  edge [color="#6c757d", arrowsize=0.7, fontname="Helvetica", fontsize=9];',
        '  start [shape=circle, label="", width=0.25, style=filled, fillcolor="#198754", color="#198754"];',
        '  end [shape=doublecircle, label="", width=0.22, style=filled, fillcolor="#212529", color="#212529"];',
    ]
    for name, node in workflow.nodes.items():
        label = node.title
        shape = SHAPE.get(node.kind, "box")
        style = "filled" if isinstance(node, Decision | Timer) else "rounded,filled"
        # A person's step has a thick blue outline (the legend under each diagram says so); no emoji, which
        # needs a font the server may not have.
        extra = ', color="#0d6efd", penwidth=2' if isinstance(node, Human) else ""
        if isinstance(node, Parallel):
            style = "rounded,filled,bold"
        state = states.get(name, "")
        fill = FILL.get(state, "#ffffff")
        # The SVG node carries its state as a class (Graphviz's `class` attribute) so the page can bring the step
        # that needs looking at into view (static/baton/diagram-zoom.js); only known states, so no text of ours
        # ends up in a class name.
        if state in FILL:
            extra += f', class="step-{state}"'
        lines.append(
            f"  {_quote(name)} [label={_quote(label)}, shape={shape}, style={_quote(style)}, "
            f"fillcolor={_quote(fill)}{extra}];"
        )

    def edge(src: str, dst: str | None, label: str = "") -> None:
        attrs = f" [label={_quote(label)}]" if label else ""
        lines.append(f"  {_quote(src)} -> {_quote(dst) if dst else 'end'}{attrs};")

    lines.append(f"  start -> {_quote(workflow.first.name)};")
    for name, node in workflow.nodes.items():
        if isinstance(node, Decision):
            for choice in node.choices:
                edge(name, choice, choice.replace("_", " "))
            continue
        if isinstance(node, Parallel):
            for branch in node.branches:
                edge(name, branch[0].name)
            join = f"{name}__join"
            lines.append(
                f'  {_quote(join)} [label="", shape=box, width=0.3, height=0.3, style=filled, fillcolor="#6c757d"];'
            )
            for branch in node.branches:
                edge(branch[-1].name, join)
            edge(join, workflow.next_after(name))
            continue
        if name in workflow.branch_of and workflow.next_after(name) is None:
            continue  # the branch's last node joins (drawn above)
        edge(name, workflow.next_after(name))
        if isinstance(node, Human) and node.on_reject not in ("end",):
            target = None if node.on_reject in ("fail", "compensate") else node.on_reject
            lines.append(
                f"  {_quote(name)} -> {_quote(target) if target else 'end'} "
                f'[label={_quote("rejected: " + node.on_reject)}, style=dashed, color="#dc3545"];'
            )
        elif isinstance(node, Human):
            lines.append(f'  {_quote(name)} -> end [label="rejected", style=dashed, color="#dc3545"];')
    lines.append("}")
    return "\n".join(lines)

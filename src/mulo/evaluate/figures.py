"""Shared figure helpers of the report: a headless pyplot, legends outside the axes, and a check that they are."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (reports are files, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend_outside(fig, handles, labels) -> None:
    """One legend for the figure, right of the axes, so it never hides data (save with bbox_inches="tight")."""
    if labels:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def legend_clear_of_axes(fig) -> bool:
    """Whether no legend of ``fig`` overlaps any of its visible axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes if ax.axison]
    return all(not leg.get_window_extent(renderer).overlaps(b) for leg in fig.legends for b in boxes)

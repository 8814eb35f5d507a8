"""Plotly figures of dataset summaries (built here, rendered by pages)."""

from __future__ import annotations

import plotly.graph_objects as go

from core.config import CLASS_NAMES
from core.data.visual import ColourStats

CLASS_COLOURS = {"0": "#4c9a5b", "1": "#d8433a"}
CHANNEL_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")


def class_balance_figure(summary: dict) -> go.Figure:
    """Patches per split, stacked by class (from ``summarize(ds)``; unlabelled shown grey)."""
    splits = list(summary["splits"])
    fig = go.Figure()
    for label, name in enumerate(CLASS_NAMES):
        counts = [summary["splits"][s]["labels"][str(label)] for s in splits]
        fig.add_bar(x=splits, y=counts, name=name, marker_color=CLASS_COLOURS[str(label)])
    unlabelled = [
        summary["splits"][s]["n"] - sum(summary["splits"][s]["labels"].values()) for s in splits
    ]
    if any(unlabelled):
        fig.add_bar(x=splits, y=unlabelled, name="unlabelled", marker_color="#aaaaaa")
    fig.update_layout(
        barmode="stack",
        height=320,
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis_title="patches",
        legend_title_text="class",
    )
    return fig


def colour_histogram_figure(stats: ColourStats) -> go.Figure:
    """Per-channel pixel histograms of the sampled patches."""
    fig = go.Figure()
    for channel, (name, colour) in enumerate(zip("RGB", CHANNEL_COLOURS, strict=True)):
        fig.add_scatter(
            x=list(range(256)), y=stats.histogram[channel], name=name, line=dict(color=colour)
        )
    fig.update_layout(
        height=300,
        margin=dict(l=10, r=10, t=30, b=10),
        xaxis_title="intensity",
        yaxis_title="fraction of pixels",
    )
    return fig

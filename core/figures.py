"""Every plotly figure the pages show or export: Compare's curves and confusion matrices, the
Training page's live curves, the Datasets page's charts, the Embeddings page's maps, the stain
robustness sweep's curves. Built here from plain results, rendered
by pages. plotly is imported inside each builder, so importing this module costs nothing (the
CLI and the GPU machine run without plotly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.config import CLASS_NAMES

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from core.compare import AtThresholds, Curves
    from core.data.visual import ColourStats
    from core.embed import Colouring, EmbeddingMap
    from core.robustness import Sweep


def figures_html(figures) -> str:
    """One self-contained HTML page holding the given plotly figures (plotly.js inlined once,
    so the file opens offline)."""
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(k == 0)) for k, fig in enumerate(figures)
    ]
    return "<html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>"


# -- Compare ----------------------------------------------------------------------------------


# Legends under the plot: AUC ± CI labels are long and the page shows three charts side by side.
CURVE_LAYOUT = {
    "height": 520,
    "legend": {"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0},
    "margin": {"l": 40, "r": 10, "t": 40, "b": 10},
}


# One colour per model (or run) by its position, the same in every chart of a page: plotly's
# default colourway shifts when a reference line ("chance", "perfect") is drawn first.
MODEL_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
)  # fmt: skip
REFERENCE_LINE = {"dash": "dot", "color": "grey"}


def model_colour(i: int) -> str:
    return MODEL_COLOURS[i % len(MODEL_COLOURS)]


def _ci_label(name: str, curves: Curves) -> str:
    if curves.auc is None:
        return f"{name}<br>AUC n/a"
    if curves.auc_ci is None:
        return f"{name}<br>AUC {curves.auc:.3f}"
    from core.metrics import format_ci  # scikit-learn: only where a Compare figure is built

    # two short lines: a legend entry wider than a narrow chart is cut off, never wrapped
    return f"{name}<br>AUC {curves.auc:.3f} (95% CI {format_ci(curves.auc_ci)}, {curves.ci_unit})"


def roc_figure(free: dict[str, Curves], thresholds=None, at: AtThresholds | None = None):
    """Overlaid ROC curves, AUC ± CI in the legend, each model's operating point marked."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=REFERENCE_LINE, name="chance"))
    for i, (name, curves) in enumerate(free.items()):
        colour = model_colour(i)  # curve and its operating point match
        if curves.roc:
            fig.add_trace(
                go.Scatter(
                    x=curves.roc["fpr"],
                    y=curves.roc["tpr"],
                    name=_ci_label(name, curves),
                    line={"color": colour},
                )
            )
        row = None if at is None else at.table.loc[name]
        if row is not None and pd.notna(row["sensitivity"]) and pd.notna(row["specificity"]):
            fig.add_trace(
                go.Scatter(
                    x=[1 - row["specificity"]],
                    y=[row["sensitivity"]],
                    mode="markers",
                    marker={"size": 11, "symbol": "x", "color": colour},
                    name=f"{name} @ {row['threshold']:.3f}",
                )
            )
    fig.update_layout(
        title="ROC", xaxis_title="1 − specificity", yaxis_title="sensitivity", **CURVE_LAYOUT
    )
    return fig


def pr_figure(free: dict[str, Curves]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, curves) in enumerate(free.items()):
        if curves.pr:
            fig.add_trace(
                go.Scatter(
                    x=curves.pr["recall"],
                    y=curves.pr["precision"],
                    name=f"{name} (AP {curves.ap:.3f})",
                    line={"color": model_colour(i)},
                )
            )
    fig.update_layout(
        title="Precision–recall", xaxis_title="recall", yaxis_title="precision", **CURVE_LAYOUT
    )
    return fig


def reliability_figure(free: dict[str, Curves]):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=REFERENCE_LINE, name="perfect"))
    for i, (name, curves) in enumerate(free.items()):
        rel = curves.reliability
        fig.add_trace(
            go.Scatter(
                x=rel["mean_prob"],
                y=rel["frac_tumour"],
                mode="lines+markers",
                line={"color": model_colour(i)},
                name=f"{name} (ECE {curves.ece:.3f}, Brier {curves.brier:.3f})",
                customdata=rel["count"],
                hovertemplate="mean P %{x:.2f}<br>tumour %{y:.2f}<br>n=%{customdata}",
            )
        )
    fig.update_layout(
        title="Reliability",
        xaxis_title="mean P(tumour) in bin",
        yaxis_title="fraction tumour",
        **CURVE_LAYOUT,
    )
    return fig


def risk_coverage_figure(at: AtThresholds):
    """Error among the patches each model is surest of, as the share it abstains on grows
    (``core.metrics.risk_coverage`` at each model's threshold)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, curve) in enumerate(at.risk_coverage.items()):
        fig.add_trace(
            go.Scatter(
                x=curve["abstained"],
                y=curve["risk"],
                mode="lines",
                line={"color": model_colour(i)},
                name=name,
                hovertemplate="abstains on %{x:.0%}<br>error among the rest %{y:.3f}",
            )
        )
    fig.update_layout(
        title="Risk–coverage",
        xaxis_title="share abstained on (least sure first)",
        yaxis_title="error rate among kept patches",
        **CURVE_LAYOUT,
    )
    return fig


def confusion_figure(cm: np.ndarray, title: str, normalised: bool = False):
    """2×2 heatmap, rows = true class, columns = predicted class."""
    import plotly.graph_objects as go

    from core.metrics import row_normalised

    values = row_normalised(cm) if normalised else cm
    text = [[f"{v:.1%}" if normalised else f"{int(v)}" for v in row] for row in values]
    fig = go.Figure(
        go.Heatmap(
            z=values.tolist(),
            x=[f"pred {c}" for c in CLASS_NAMES],
            y=[f"true {c}" for c in CLASS_NAMES],
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
        )
    )
    fig.update_layout(title=title, height=300, yaxis={"autorange": "reversed"})
    return fig


# -- Training ---------------------------------------------------------------------------------


CURVE_PANELS = (("loss", "loss"), ("accuracy", "accuracy"), ("auc", "AUC"), ("lr", "learning rate"))


def curves_figure(metrics: Mapping[str, pd.DataFrame]):
    """Loss / accuracy / AUC / lr against the optimizer step, one colour per run; training
    windows as thin lines, validation (once per epoch) as markers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in CURVE_PANELS])
    for i, (name, frame) in enumerate(metrics.items()):
        colour = model_colour(i)
        for j, (column, _) in enumerate(CURVE_PANELS):
            for split, mode, dash in (("train", "lines", None), ("valid", "lines+markers", "dot")):
                rows = frame[(frame["split"] == split) & frame[column].notna()]
                if rows.empty or (column == "lr" and split == "valid"):
                    continue
                if len(rows) < 3:  # a short run's lone points would be invisible as a line
                    mode = "lines+markers"
                fig.add_trace(
                    go.Scatter(
                        x=rows["step"],
                        y=rows[column],
                        mode=mode,
                        name=f"{name} · {split}",
                        legendgroup=f"{name} · {split}",
                        showlegend=j == 0,
                        line={
                            "color": colour,
                            "dash": dash,
                            "width": 1.5 if split == "train" else 2.5,
                        },
                    ),
                    row=j // 2 + 1,
                    col=j % 2 + 1,
                )
    fig.update_xaxes(title_text="step")
    # plotly's SI ticks write 9e-4 as "900µ"; a learning rate reads as 9e-4
    fig.update_yaxes(exponentformat="e", tickformat=".1e", row=2, col=2)
    fig.update_layout(
        height=560, margin={"t": 40, "b": 40}, legend={"orientation": "h", "y": -0.15}
    )
    return fig


# -- Datasets ---------------------------------------------------------------------------------

CLASS_COLOURS = {"0": "#4c9a5b", "1": "#d8433a"}
CHANNEL_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")


def class_balance_figure(summary: dict) -> go.Figure:
    """Patches per split, stacked by class (from ``summarize(ds)``; unlabelled shown grey)."""
    import plotly.graph_objects as go

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
    import plotly.graph_objects as go

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


# -- embedding maps (core.embed) -------------------------------------------------------------
MAP_COLOURS = {
    "tumour": "#d62728",
    "normal": "#1f77b4",
    "TP": "#d62728",
    "FN": "#ff9896",
    "FP": "#1f77b4",
    "TN": "#aec7e8",
    "unlabelled": "#b0b0b0",
    "both: tumour": "#d62728",
    "both: normal": "#1f77b4",
}
MAP_LEGEND_MAX = 12  # more groups (patients, slides) share a cycled palette without a legend


def embedding_figure(
    emap: EmbeddingMap, colouring: Colouring, title: str, height: int = 480
) -> go.Figure:
    """A WebGL scatter of one map; each point's ``customdata`` is its row in ``emap.frame``, so a
    box/lasso selection maps back to patches (``core.embed.rows_from_selection``)."""
    import plotly.express as px
    import plotly.graph_objects as go

    frame = emap.frame
    rows = np.arange(len(frame))
    hover = (
        frame["id"].astype(str)
        + "<br>label "
        + frame["label"].map({1: "tumour", 0: "normal"}).fillna("unlabelled")
        + "<br>P(tumour) "
        + frame["prob"].map("{:.3f}".format)
    )
    if "patient" in frame:
        hover += "<br>patient " + frame["patient"].astype(str)
    hover = hover.to_numpy()
    marker = {"size": 4, "opacity": 0.8}

    def trace(mask, name, **marker_style):
        return go.Scattergl(
            x=frame["x"].to_numpy()[mask],
            y=frame["y"].to_numpy()[mask],
            mode="markers",
            name=name,
            customdata=rows[mask],
            hovertext=hover[mask],
            hoverinfo="text",
            marker=marker | marker_style,
        )

    values = colouring.values
    everything = np.ones(len(frame), bool)
    if colouring.continuous:
        traces = [
            trace(
                everything,
                colouring.title,
                color=values,
                colorscale="RdBu_r",
                cmin=0,
                cmax=1,
                colorbar={"title": colouring.title},
            )
        ]
    else:
        groups = sorted(set(values.tolist()))
        palette = px.colors.qualitative.Dark24
        if len(groups) <= MAP_LEGEND_MAX:
            traces = [
                trace(values == g, g, color=MAP_COLOURS.get(g, palette[k % len(palette)]))
                for k, g in enumerate(groups)
            ]
        else:
            # numeric codes on a stepped palette: 0.19 s CPU for two 32,768-point maps, where one
            # colour string per point took 1.84 s
            codes = np.searchsorted(groups, values) % len(palette)
            scale = [[k / (len(palette) - 1), colour] for k, colour in enumerate(palette)]
            traces = [
                trace(
                    everything,
                    colouring.title,
                    color=codes,
                    colorscale=scale,
                    cmin=0,
                    cmax=len(palette) - 1,
                )
            ]
    fig = go.Figure(traces)
    axis = {"showticklabels": False, "zeroline": False, "showgrid": False}
    fig.update_layout(
        # left-aligned and small: a centred title ran under the toolbar and off a narrow chart
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 14}},
        height=height,
        dragmode="lasso",
        uirevision=title,  # zoom survives a recolour
        margin={"l": 10, "r": 10, "t": 64, "b": 40},
        # below the axis title (at y -0.05 the two overlapped on an 800 px wide window)
        legend={"orientation": "h", "y": -0.08, "yanchor": "top", "itemsizing": "constant"},
        showlegend=not colouring.continuous and len(traces) > 1,
        xaxis=axis | {"title": f"{emap.method.upper()} 1"},
        yaxis=axis | {"title": f"{emap.method.upper()} 2"},
    )
    return fig


# -- Explain: can I trust these maps? -----------------------------------------------------------


def sanity_figure(curves: pd.DataFrame, metric: str = "abs_spearman", mode: str = "cascading"):
    """Similarity to the trained model's map against randomisation depth (core.sanity curves):
    one line per method with its 95 % band, the two controls dashed, the verdict's threshold
    dotted. Depth 0 (the trained model explained twice) starts every line."""
    import plotly.graph_objects as go

    from core.sanity import CONTROLS, PASS_MAX_ABS_RHO

    rows = curves[(curves["metric"] == metric) & curves["mode"].isin([mode, "—"])]
    stages = rows.drop_duplicates("depth").sort_values("depth")
    fig = go.Figure()
    for i, (method, line) in enumerate(rows.groupby("method", sort=False)):
        line = line.sort_values("depth")
        colour = "grey" if method in CONTROLS else model_colour(i)
        band = np.concatenate([line["high"], line["low"][::-1]])
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([line["depth"], line["depth"][::-1]]),
                y=band,
                fill="toself",
                fillcolor=colour,
                opacity=0.15,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=line["depth"],
                y=line["mean"],
                name=method,
                mode="lines+markers",
                line={"color": colour, "dash": "dash" if method in CONTROLS else "solid"},
                customdata=line[["stage", "n_patches", "n_constant"]],
                hovertemplate="%{customdata[0]}: %{y:.2f} (%{customdata[1]} patches, "
                "%{customdata[2]} constant maps left out)<extra>" + method + "</extra>",
            )
        )
    if metric == "abs_spearman":
        fig.add_hline(y=PASS_MAX_ABS_RHO, line=REFERENCE_LINE, annotation_text="pass threshold")
    labels = {"abs_spearman": "|Spearman ρ|", "spearman": "Spearman ρ", "ssim": "SSIM"}
    fig.update_layout(
        **CURVE_LAYOUT,
        title=f"{labels[metric]} to the trained model's map, {mode} randomisation",
        xaxis={
            "title": "randomised down to",
            "tickvals": list(stages["depth"]),
            "ticktext": [
                "trained" if d == 0 else s
                for d, s in zip(stages["depth"], stages["stage"], strict=True)
            ],
        },
        yaxis={"title": labels[metric], "range": [-1.05 if metric == "spearman" else -0.05, 1.05]},
    )
    return fig


# -- Robustness (Compare) -------------------------------------------------------------------------


# Short enough for a 290 px chart; the shift's full meaning is the Strengths box's help.
ROBUSTNESS_TITLES = {
    "auc": "AUC",
    "balanced_accuracy": "Balanced accuracy",
    "ece": "ECE (calibration error)",
    "flip_share": "Calls that flip",
}


def robustness_figures(sweep: Sweep) -> list[go.Figure]:
    """One figure per metric (``core.robustness.METRICS``), strength on x, a line per model;
    AUC with its 95% CI as error bars; each model's unshifted value a dotted line in its colour."""
    from core.robustness import METRICS, SHIFTS

    return [_robustness_figure(sweep, metric, SHIFTS[sweep.family].axis) for metric in METRICS]


def _robustness_figure(sweep: Sweep, metric: str, x_title: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, rows) in enumerate(sweep.table.groupby("model", sort=False)):
        colour = model_colour(i)
        shifted = rows[rows["strength"].notna()]
        unshifted = rows.loc[rows["strength"].isna(), metric].iloc[0]
        error = None
        if metric == "auc" and shifted["auc_low"].notna().all():
            error = {
                "type": "data",
                "array": shifted["auc_high"] - shifted["auc"],
                "arrayminus": shifted["auc"] - shifted["auc_low"],
            }
        fig.add_trace(
            go.Scatter(
                x=shifted["strength"],
                y=shifted[metric],
                mode="lines+markers",
                name=name,
                line={"color": colour},
                error_y=error,
                legendgroup=name,
            )
        )
        if not pd.isna(unshifted):
            fig.add_hline(y=unshifted, line={"dash": "dot", "color": colour, "width": 1})
    fig.update_layout(
        title=f"{ROBUSTNESS_TITLES[metric]}<br><sup>under {sweep.family} shift; dotted: unshifted"
        "</sup>",
        xaxis_title=x_title,
        yaxis_title=metric.replace("_", " "),
        **CURVE_LAYOUT,
    )
    fig.update_layout(margin={"t": 64})  # the title's two lines
    return fig

"""AppTest helpers for what a *browser* shows (imported by the page tests; not a test module).

AppTest reads every widget's value from the server; the browser draws its own copy. They part
when a widget comes back after a run without it, which is how Compare once showed 0.000 while
applying 0.787 (issue 13, items 1-2; seen in Chromium, tests/test_browser.py). ``drawn`` models
the browser's rule so a page test fails the same way a user would be misled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest


def widget(at: AppTest, kind: str, label: str):
    """The widget of ``kind`` whose label starts with ``label`` (labels are what users see)."""
    return next(w for w in getattr(at, kind) if w.label.startswith(label))


def ok(at: AppTest) -> AppTest:
    assert not at.exception, at.exception
    return at


def drawn(at: AppTest, action=None) -> AppTest:
    """Run ``action`` (or the app) and leave every widget at the value the browser draws.

    AppTest reads widget values from the server. A browser draws a widget that was absent from
    the previous run (hidden by a toggle, behind st.stop, on another page) at its element
    default unless the server sends the value along (``proto.set_value``), and sends what it
    draws with the next interaction. That is how Compare showed 0.000 while applying 0.787
    (seen in Chromium: test_browser.py). Sliders, number inputs and toggles are modelled.
    """
    before = {w.id for w in frontend_widgets(at)}
    ok((action or at).run())
    for w in frontend_widgets(at):
        if w.id not in before and not w.proto.set_value:
            default = w.proto.default
            default = default if isinstance(default, bool | int | float) else default[0]
            w.set_value(int(default) if getattr(w.proto, "data_type", None) == INT else default)
    return at


INT = 0  # Slider.INT == NumberInput.INT; checkboxes have no data type


def frontend_widgets(at: AppTest) -> list:
    return [*at.slider, *at.number_input, *at.toggle, *at.checkbox]


def visit(at: AppTest, page: str) -> AppTest:
    """Go to ``pages/<page>.py`` as the sidebar link does (AppTest needs a run after it)."""
    at.switch_page(f"pages/{page}.py")
    return ok(at.run())

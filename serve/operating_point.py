"""Which operating point (theta, k, rule, scorer) a monitor serves, and where each value came from.

A partial evaluation records its chosen points in the checkpoint folder (``operating_point.json``, written by
``utils/evaluation/operating_point.py``). Serving resolves the final point with this precedence, field by field:

1. explicit flags (``--theta``, ``--k``, ``--scorer``);
2. the chosen entry of ``operating_point.json``: ``--operating-point leak_free|leak_free_early|budget``, or, without
   the flag, the entry the file marks as its default (``leak_free`` unless the evaluation chose otherwise);
3. the checkpoint config's training defaults (``theta``, ``delay_k``, ``scorer``), with a warning that names the
   command that calibrates the checkpoint when no file exists. ``--operating-point checkpoint`` asks for them.

:func:`resolve_operating_point` returns the point and a one-line description of its origin, e.g. ``theta 0.9, k 9,
delay-k, token scorer from operating_point.json (leak_free, chosen on val of data/x by `bash scripts/run-scm.sh
test` at 2026-01-31T12:00:00+0000)``. ``StreamingMonitor.from_pretrained`` calls it, so the gateway
(``run-serve.sh``), the streaming CLI (``run-stream.sh``) and ``generate()``'s stopping criteria all serve the
recorded point by default. The file holds delay-k points: with ``--rule consecutive-n`` it does not apply.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from utils.evaluation.operating_point import (DELAY_K, DRIVERS, OPERATING_POINT_FILE, SELECTION_ALIASES,
                                              calibration_command,
                                              read_operating_point, recorded_scorers, scorer_points)

# --operating-point values: a rule recorded in operating_point.json, or the checkpoint config's training default.
CHOICES = ("leak_free", "leak_free_early", "budget", "checkpoint")
FLAG = "flag"
FILE = OPERATING_POINT_FILE
CONFIG = "training default"


class OperatingPointError(ValueError):
    """The operating point asked for cannot be served from this checkpoint; the message names the fix."""


@dataclass(frozen=True)
class ServedOperatingPoint:
    """The point a monitor serves and where each of its values came from.

    Attributes:
        theta, k, rule, scorer: the point (``k`` None: the rule's own default, e.g. consecutive-n's 2).
        sources: per field (``theta``, ``k``, ``scorer``): ``flag``, ``operating_point.json`` or
            ``training default``.
        selection: the ``operating_point.json`` rule served (``leak_free``, ...), None when the file gave nothing.
        entry: that rule's entry of the file (validation numbers included), None when the file gave nothing.
        origin: the file's ``source`` and ``written_at`` (data folder, driver, time), None without a file.
        description: one line for logs and CLIs (names the checkpoint as it was given).
        warning: set when the checkpoint has no ``operating_point.json`` and a training default is served.
        public_description, public_warning: the same lines with the checkpoint named ``CKPT`` and the data folder
            by its name only (for ``/health``, an open route).
    """

    theta: float
    k: int | None
    rule: str
    scorer: str
    sources: dict[str, str] = field(default_factory=dict)
    selection: str | None = None
    entry: dict[str, Any] | None = None
    origin: dict[str, Any] | None = None
    description: str = ""
    warning: str | None = None
    public_description: str = ""
    public_warning: str | None = None

    @property
    def calibrated(self) -> bool:
        """Whether some served value came from ``operating_point.json``."""
        return FILE in self.sources.values()

    def public(self) -> dict[str, Any]:
        """What ``/health`` (an open route) reports: the point, each value's source, the file's rule, the data
        folder's name (``data``: its last component, never the path recorded), the driver when it is one of the
        repository's own commands, the time and the validation numbers; no path of any kind."""
        origin = self.origin or {}
        body: dict[str, Any] = {
            "theta": self.theta, "k": self.k, "rule": self.rule, "scorer": self.scorer,
            "source": _overall_source(self.sources), "sources": dict(self.sources), "calibrated": self.calibrated,
            "selection": self.selection, "description": self.public_description}
        if self.calibrated:
            driver = origin.get("driver")
            body.update(selected_on=(self.entry or {}).get("selected_on"), data=folder_name(origin.get("data_dir")),
                        chosen_by=driver if driver in DRIVERS.values() else None, chosen_at=origin.get("written_at"),
                        validation=(self.entry or {}).get("validation"))
            if "max_benign_stop_rate" in (self.entry or {}):
                body["max_benign_stop_rate"] = self.entry["max_benign_stop_rate"]
        if self.public_warning:
            body["warning"] = self.public_warning
        return body


def folder_name(path: Any) -> str | None:
    """The last component of a recorded folder (``data/realmix2`` -> ``realmix2``); None stays None."""
    if not isinstance(path, str) or not path.strip("/\\"):
        return None
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _overall_source(sources: dict[str, str]) -> str:
    kinds = set(sources.values())
    if kinds == {FLAG}:
        return "flags"
    return next(iter(kinds)) if len(kinds) == 1 else "mixed"


def _config_value(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def _number(value: float) -> str:
    return f"{value:g}"


def _file_entry(content: dict[str, Any], selection: str, scorer: str, explicit: bool, model_path: str,
                calibrate: str) -> tuple[dict[str, Any] | None, str | None]:
    """The file's entry for ``selection`` and ``scorer`` (None with a note when it has none and nothing asked for
    it explicitly).

    Raises:
        OperatingPointError: an explicitly chosen entry the file does not hold.
    """
    path = os.path.join(model_path, FILE)
    recorded = scorer_points(content, scorer)
    if recorded is None:
        # The note names the file only: it goes into /health, which shows no path.
        note = (f"{FILE} holds no points for the {scorer} scorer (it has {', '.join(recorded_scorers(content))})")
        if explicit:
            raise OperatingPointError(f"{path} holds no points for the {scorer} scorer (it has "
                                      f"{', '.join(recorded_scorers(content))}): evaluate that scorer, or leave "
                                      f"--scorer out")
        return None, note
    entry = recorded["points"].get(selection)
    if not isinstance(entry, dict) or entry.get("theta") is None or entry.get("k") is None:
        reason = recorded["unavailable"].get(selection) or "the evaluation that wrote it chose none"
        note = f"{FILE} holds no {selection} point for the {scorer} scorer ({reason})"
        if explicit:
            found = f"{path} holds no {selection} point for the {scorer} scorer ({reason})"
            if selection == "leak_free_budget":
                raise OperatingPointError(
                    f"--operating-point budget: {found}. Re-run the evaluation with a larger budget (`{calibrate} "
                    f"--max-benign-stop-rate 0.05`), or serve another point (--operating-point leak_free)")
            raise OperatingPointError(f"--operating-point {selection}: {found}; re-run `{calibrate}`")
        return None, note
    return entry, None


def resolve_operating_point(
    model_path: str | os.PathLike,
    config: Any,
    *,
    theta: float | None = None,
    k: int | None = None,
    rule: str = DELAY_K,
    scorer: str | None = None,
    choice: str | None = None,
    max_benign_stop_rate: float | None = None,
) -> ServedOperatingPoint:
    """The point to serve from explicit values, the checkpoint's ``operating_point.json`` and its config.

    Args:
        model_path: the checkpoint folder, as the user gave it (messages name it so).
        config: the checkpoint config (attributes or a dict): ``theta``, ``delay_k``, ``scorer``, ``task``.
        theta, k, scorer: explicit values (None: not given).
        rule: the decision rule's name (``delay-k`` or ``consecutive-n``).
        choice: ``--operating-point`` (:data:`CHOICES`); None: the file's default when there is a file.
        max_benign_stop_rate: the budget the user asks to serve (implies ``choice="budget"``); it must be the
            file's.

    Returns:
        The point with its sources and description (see :class:`ServedOperatingPoint`).

    Raises:
        OperatingPointError: an unknown choice, a chosen rule or budget the file does not hold, no file when one is
            asked for, or a recorded (delay-k) point asked for with another rule; each message names the fix.
        utils.io_utils.DataFormatError: an ``operating_point.json`` that is not one.
    """
    model_path = os.fspath(model_path)
    if choice is not None and choice not in CHOICES:
        raise OperatingPointError(f"--operating-point {choice!r} is unknown; use one of {', '.join(CHOICES)}")
    if max_benign_stop_rate is not None:
        if not (math.isfinite(max_benign_stop_rate) and 0.0 <= max_benign_stop_rate <= 1.0):
            raise OperatingPointError(f"--max-benign-stop-rate is a share from 0 to 1 (e.g. 0.02), got "
                                      f"{max_benign_stop_rate}")
        if choice not in (None, "budget"):
            raise OperatingPointError(f"--max-benign-stop-rate picks the budget point; it does not go with "
                                      f"--operating-point {choice} (use --operating-point budget)")
        choice = "budget"
    task = _config_value(config, "task", "scm")
    calibrate = calibration_command(task, model_path)
    explicit = choice in SELECTION_ALIASES
    content = None if choice == "checkpoint" else read_operating_point(model_path)
    if explicit and content is None:
        raise OperatingPointError(
            f"--operating-point {choice}: {model_path} holds no {FILE}; calibrate it with `{calibrate}`, or serve "
            f"the training default with --operating-point checkpoint")
    notes: list[str] = []
    entry = selection = None
    if content is not None and rule != DELAY_K:
        if explicit:
            raise OperatingPointError(f"--operating-point {choice} is a delay-k point ({FILE} records delay-k "
                                      f"points); leave --rule {rule} out, or leave --operating-point out and give "
                                      f"--theta and --k")
        notes.append(f"{FILE} holds delay-k points, not {rule} ones")
    elif content is not None:
        selection = SELECTION_ALIASES[choice] if explicit else content["default"]
        file_scorer = scorer or content["scorer"]
        entry, note = _file_entry(content, selection, file_scorer, explicit, model_path, calibrate)
        if entry is not None:
            entry = {**entry, "scorer": entry.get("scorer") or file_scorer}
        if note:
            notes.append(note)
        if entry is not None and selection == "leak_free_budget" and max_benign_stop_rate is not None and \
                abs(entry.get("max_benign_stop_rate", math.nan) - max_benign_stop_rate) > 1e-12:
            raise OperatingPointError(
                f"{os.path.join(model_path, FILE)} holds the budget point for at most "
                f"{100 * entry['max_benign_stop_rate']:g}% benign stops, not {100 * max_benign_stop_rate:g}%: "
                f"re-run `{calibrate} --max-benign-stop-rate {max_benign_stop_rate:g}`, or leave "
                f"--max-benign-stop-rate out to serve the recorded budget")
        if entry is None:
            selection = None

    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, given, recorded, default in (
            ("theta", theta, None if entry is None else entry["theta"], _config_value(config, "theta", 0.5)),
            ("k", k, None if entry is None else entry["k"],
             _config_value(config, "delay_k", 1) if rule == DELAY_K else None),
            ("scorer", scorer, None if entry is None else entry["scorer"], _config_value(config, "scorer", "token"))):
        if given is not None:
            values[name], sources[name] = given, FLAG
        elif recorded is not None:
            values[name], sources[name] = recorded, FILE
        else:
            values[name], sources[name] = default, CONFIG
    if values["k"] is None:  # another rule's own default (consecutive-n: 2), chosen by the monitor
        del sources["k"]
    if FILE not in sources.values():  # every value was given: the file served nothing
        entry = selection = None
    theta_value = float(values["theta"])
    k_value = None if values["k"] is None else int(values["k"])

    def line(label: str, public: bool = False) -> tuple[str, str | None]:
        # Values from the main source (the file when it gave the point, else the training default) go untagged.
        main = FILE if FILE in sources.values() else CONFIG
        shown = {"theta": _number(theta_value), "k": k_value, "scorer": values["scorer"]}

        def field_text(name: str, text: str) -> str:
            source = sources[name]
            return text if source == main else f"{text} ({'--' + name if source == FLAG else source})"

        parts = [field_text("theta", f"theta {shown['theta']}")]
        if k_value is not None:
            parts.append(field_text("k", f"k {k_value}"))
        parts += [rule, field_text("scorer", f"{values['scorer']} scorer")]
        text = ", ".join(parts)
        if main == FILE:
            origin = content.get("source") or {}
            by = origin.get("driver") or origin.get("script") or "an evaluation"
            data = origin.get("data_dir")
            if public:  # an open route: no path, not even a relative one
                data = folder_name(data)
                by = by if by in DRIVERS.values() else "an evaluation"
            text += (f" from {FILE} ({selection}, chosen on {entry.get('selected_on')} of {data} "
                     f"by `{by}` at {content.get('written_at')})")
        elif CONFIG in sources.values():
            text += (": the checkpoint's training default" if FLAG not in sources.values() else
                     ", the rest the checkpoint's training default")
        if choice == "checkpoint":
            text += " (--operating-point checkpoint)"
        if notes:
            text += "; " + "; ".join(notes)
        warning = None
        if content is None and choice != "checkpoint" and CONFIG in (sources["theta"], sources.get("k")):
            defaults = " / ".join(f"{name} {shown[name]}" for name in ("theta", "k") if sources.get(name) == CONFIG)
            warning = (f"no {FILE} in {label}: serving the training default {defaults}; calibrate with "
                       f"`{calibration_command(task, label)}`")
        return text, warning

    description, warning = line(model_path)
    public_description, public_warning = line("CKPT", public=True)
    origin = None
    if entry is not None:
        origin = {**(content.get("source") or {}), "written_at": content.get("written_at")}
    return ServedOperatingPoint(theta=theta_value, k=k_value, rule=rule, scorer=values["scorer"], sources=sources,
                                selection=selection, entry=entry, origin=origin,
                                description=description if warning is None else f"{description} ({warning})",
                                warning=warning, public_description=public_description if public_warning is None
                                else f"{public_description} ({public_warning})", public_warning=public_warning)


def served_point(monitor: Any) -> dict[str, Any]:
    """``/health``'s view of a monitor's operating point: :meth:`ServedOperatingPoint.public` when the monitor was
    loaded with :meth:`StreamingMonitor.from_pretrained` and still serves that point, else its live settings as the
    code that built (or changed) it set them."""
    served = getattr(monitor, "operating_point", None)
    k = getattr(monitor.rule, "k", getattr(monitor.rule, "n", None))
    if served is not None and (served.theta, served.scorer) == (monitor.theta, monitor.scorer) and \
            served.k in (None, k) and monitor.rule.name.startswith(served.rule.split("-")[0]):
        return served.public()
    return {"theta": monitor.theta, "k": k, "rule": monitor.rule.name, "scorer": monitor.scorer,
            "source": "code", "calibrated": False,
            "description": "set by the code that built or changed the monitor, not by flags or operating_point.json"}

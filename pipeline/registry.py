"""The MLflow model registry as the pipeline uses it: versions, the ``champion`` alias, where a registered
version's SavedModel is on disk, and the descriptions people read there (each version's summary and its deploy,
promote and rollback events as lines; the registered model's table of versions)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pipeline import paths
from pipeline.tracking import client

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
SERVED_ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)
# Where versions registered before the events were lines of their description kept them (a JSON list): read only.
EVENTS_TAG = "deploy.events"
VERSIONS_HEADING = "### Versions"


def version_by_alias(model_name: str, alias: str) -> "ModelVersion | None":
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def saved_model_dir(model_name: str, version: int | str) -> Path | None:
    """The SavedModel of a registered version: its serving directory, or (when that is gone) the copy in the
    MLflow artifact store, downloaded to a cache."""
    local = paths.serving_dir(model_name) / str(version)
    if (local / "saved_model.pb").exists():
        return local
    import mlflow

    mv = client().get_model_version(model_name, str(version))
    dst = paths.pipeline_home() / "cache" / "models" / model_name / str(version)
    if not (dst / "saved_model" / "saved_model.pb").exists():
        dst.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(f"{mv.source.rstrip('/')}/artifacts/saved_model", dst_path=str(dst))
    return dst / "saved_model" if (dst / "saved_model" / "saved_model.pb").exists() else None


def champion_dir(model_name: str) -> tuple[int, Path] | None:
    mv = version_by_alias(model_name, CHAMPION)
    if mv is None:
        return None
    path = saved_model_dir(model_name, mv.version)
    return (int(mv.version), path) if path is not None else None


def served_aliases(model_name: str) -> dict[str, int]:
    """The aliases that decide what is served (``champion``, ``previous``, ``challenger``) and their versions."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client().get_registered_model(model_name).aliases
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in aliases.items() if alias in SERVED_ALIASES}


def set_aliases(model_name: str, aliases: dict[str, int | None]) -> None:
    """Point each alias at its version, or delete it (``None``)."""
    from mlflow.exceptions import MlflowException

    c = client()
    for alias, version in aliases.items():
        if version is None:
            try:
                c.delete_registered_model_alias(model_name, alias)
            except MlflowException:
                pass  # already absent
        else:
            c.set_registered_model_alias(model_name, alias, str(version))


def logged_model_id(mv: "ModelVersion") -> str | None:
    """The id of the logged model a version was registered from (its metrics are the Models tab's). MLflow's
    SQL store leaves ``ModelVersion.model_id`` empty for a version registered from ``models:/<model_id>``; the
    source names it then."""
    if mv.model_id:
        return mv.model_id
    rest = (mv.source or "").removeprefix("models:/")
    return rest if rest != mv.source and rest.startswith("m-") and "/" not in rest else None


def next_version(model_name: str) -> int:
    """The number the registry gives the next version of ``model_name``: one past the highest registered (the
    export names the candidate's logged model after it; its register task follows at once, and the training
    DAG runs one run at a time)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client().search_model_versions(f"name = '{model_name}'", max_results=1,
                                               order_by=["version_number DESC"])
    except MlflowException:
        return 1
    return int(found[0].version) + 1 if found else 1


# ------------------------------------------------------------------------ the version's description
# The description of a registered version is markdown that people read in the registry: what the register task
# wrote (data, metrics against the champion, the gate's decision, lineage), then one line per alias move.
# MLflow stores at most 5000 characters (its SQL column), so old events are dropped first.
EVENTS_HEADING = "### Deploy events"
MAX_DESCRIPTION = 5000
_EVENT_LINE = re.compile(r"^- `(?P<at>[^`]*)` (?P<action>\S+) → `(?P<alias>[^`]*)` by `(?P<by>[^`]*)`"
                         r"(?:: (?P<reason>.*))?$")


def event_line(event: Mapping[str, Any]) -> str:
    """One event as the markdown line of the description: ``- `at` action → `alias` by `who`: reason``."""
    def plain(value: Any) -> str:  # one line, no backticks to break the code spans
        return " ".join(str(value or "").replace("`", "'").split())

    line = (f"- `{plain(event.get('at')) or '?'}` {plain(event.get('action')) or '?'} → "
            f"`{plain(event.get('alias'))}` by `{plain(event.get('by')) or '?'}`")
    return f"{line}: {plain(event['reason'])}" if plain(event.get("reason")) else line


def parse_events(description: str | None) -> list[dict[str, str]]:
    """The events recorded in a version's description (the lines of :func:`event_line`, oldest first)."""
    text = description or ""
    if EVENTS_HEADING not in text:
        return []
    events = []
    for line in text.split(EVENTS_HEADING, 1)[1].splitlines():
        match = _EVENT_LINE.match(line.strip())
        if match:
            events.append({k: v for k, v in match.groupdict().items() if v is not None})
    return events


def _compose(summary: str, events: list[str]) -> str:
    """``summary`` and the event lines within MLflow's limit: the oldest events go first, then the summary's
    tail (its lineage comes last and says where the rest is)."""
    def text(lines: list[str], head: str) -> str:
        return head.rstrip() + (f"\n\n{EVENTS_HEADING}\n\n" + "\n".join(lines) if lines else "") + "\n"

    while len(text(events, summary)) > MAX_DESCRIPTION and len(events) > 1:
        events = events[1:]
    out = text(events, summary)
    if len(out) > MAX_DESCRIPTION:
        room = MAX_DESCRIPTION - len(text(events, "")) - 2
        out = text(events, summary[:max(room, 0)].rstrip() + " …")
    return out


def describe_version(model_name: str, version: int | str, summary: str) -> None:
    """Write ``summary`` (markdown) as the description of the version, keeping the events already recorded."""
    c = client()
    mv = c.get_model_version(model_name, str(version))
    events = [event_line(e) for e in parse_events(mv.description)]
    c.update_model_version(model_name, str(version), description=_compose(summary, events))


def record_event(model_name: str, version: int | str, event: dict) -> None:
    """Append ``event`` (action, alias, by, at, reason) to the version's description as a readable line."""
    c = client()
    mv = c.get_model_version(model_name, str(version))
    text = mv.description or ""
    summary = text.split(EVENTS_HEADING, 1)[0]
    events = [event_line(e) for e in parse_events(text)] + [event_line(event)]
    c.update_model_version(model_name, str(version), description=_compose(summary, events))


def version_events(model_name: str, version: int | str) -> list[dict]:
    """What moved an alias onto the version, oldest first: the lines of its description, after those a version
    registered before them kept in its JSON tag ``deploy.events``."""
    mv = client().get_model_version(model_name, str(version))
    legacy = json.loads(mv.tags.get(EVENTS_TAG) or "[]")
    return legacy + parse_events(mv.description)


def describe_model(model_name: str, table: str) -> None:
    """Put ``table`` (markdown: the versions side by side) in the registered model's description, under a
    heading of its own; what a person wrote above it stays."""
    c = client()
    current = c.get_registered_model(model_name).description or ""
    head = current.split(VERSIONS_HEADING, 1)[0].rstrip()
    text = (head + "\n\n" if head else "") + f"{VERSIONS_HEADING}\n\n{table.strip()}\n"
    if len(text) > MAX_DESCRIPTION:  # the table's oldest rows are last: cut there, on a row
        text = text[:MAX_DESCRIPTION].rsplit("\n", 1)[0] + "\n"
    if text != current:
        c.update_registered_model(model_name, description=text)

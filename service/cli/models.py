"""`tagflow models`: the registry from the command line: list, compare, promote, roll back, the
served cut, and export / import of a version between deployments."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table
from sqlmodel import Session

from service.cli import lineage
from service.cli.common import (
    CommandGroup,
    cli_actor,
    cli_encoder,
    cli_tags,
    console,
    engine_or_exit,
    input_file_or_exit,
    open_session,
    output_file_or_exit,
    print_error,
    print_warning,
    session_stopped_as_interrupt,
    settings_or_exit,
    shown_url,
    version_name_or_exit,
    warn_dropped,
    warn_seen_in_training,
)
from service.entities import ModelStatus, ModelVersion, ProductionChangePublic
from service.entities.common import storable
from service.errors import InvalidInputError, TagflowError
from service.migrations import upgraded_view
from service.ml import production_history, registry
from service.ml.dataset import DatasetError, load_dataset
from service.ml.production_history import MAX_HISTORY
from service.tags import TagSet

if TYPE_CHECKING:  # pulls in scikit-learn and ONNX Runtime: `models list` needs neither
    from service.ml.version_check import VersionCheck

models_app = typer.Typer(help="The model registry.", no_args_is_help=True, cls=CommandGroup)


@models_app.command("list")
def models_list(
    where: Annotated[
        list[str] | None, typer.Option(help="e.g. per_class.mlops.precision>=0.95")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the versions' records as JSON, as GET /models")
    ] = False,
) -> None:
    """List versions, newest first, optionally filtered by metric criteria.

    On its evaluation set: F1 (weighted), auto (share answered on its own), auto prec."""
    settings = settings_or_exit()
    try:
        criteria = [registry.Criterion.parse(w) for w in where or []]
        with open_session(settings) as session:
            rows = registry.list_versions(session, criteria=criteria)
    except TagflowError as exc:  # a malformed criterion, or one on a metric no version has
        print_error(str(exc))
        raise typer.Exit(2) from None
    if as_json:
        records = [registry.public_record(r, artifacts_dir=settings.artifacts_dir) for r in rows]
        print(json.dumps({"models": [r.model_dump(mode="json") for r in records]}, indent=2))
    elif rows:
        console.print(_versions_table(rows))
    else:
        # Where it looked: run from another folder than `make run`'s, it reads another ./var.
        empty = f" yet in {shown_url(settings.resolved_database_url)}"
        console.print("no version" + (" meets " + " and ".join(where) if where else empty))


@models_app.command("check")
def models_check(
    versions: Annotated[
        list[str] | None,
        typer.Argument(help="Versions to check (default: production and its rollback targets)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON")] = False,
) -> None:
    """Whether this installation can serve each version: run it before an upgrade (with the
    new release, against the registry) and after.

    Each version is loaded as the API loads it and scores a few fixed items; a version is
    refused, with why, when its artifact fails its checksum, was pickled by another major or
    minor release of scikit-learn, or does not load or score. Exit 1 when production (or a
    version named) is refused."""
    from service.ml.runtime import current_runtime
    from service.ml.version_check import check_version, versions_to_check

    settings = settings_or_exit()
    # Read as this release will see the registry, the database left at its revision: run
    # before an upgrade, upgrading it would lock out the release in service (its next start,
    # every command), whatever the check finds.
    engine = engine_or_exit(settings, upgrade=False)
    try:
        with upgraded_view(engine) as conn, Session(conn, expire_on_commit=False) as session:
            rows = (
                [registry.get_version(session, version=v) for v in versions]
                if versions
                else versions_to_check(session)
            )
    except TagflowError as exc:  # no such version
        print_error("cannot check:", exc)
        raise typer.Exit(1) from None
    checks: list[VersionCheck] = []
    if rows:
        encoder = cli_encoder(settings)
        checks = [
            check_version(row, artifacts_dir=settings.artifacts_dir, encoder=encoder)
            for row in rows
        ]
    if as_json:
        shown = {"runtime": current_runtime(), "versions": [c.as_json() for c in checks]}
        print(json.dumps(shown, indent=2))
    elif checks:
        console.print(_checks_table(checks))
        for check in checks:
            for line in (check.refused, *check.notes):
                if line:
                    print_warning(line)
    else:
        console.print("no production version: name the versions to check")
    failed = [c for c in checks if c.refused and (versions or c.status is ModelStatus.PRODUCTION)]
    if failed:
        print_error("refused:", ", ".join(c.version for c in failed))
        raise typer.Exit(1)


def _checks_table(checks: list[VersionCheck]) -> Table:
    from service.ml.runtime import SKLEARN, current_runtime

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("version", "status", "made with scikit-learn", "python", "here"):
        table.add_column(header, no_wrap=True)
    table.caption = f"this runtime: scikit-learn {current_runtime()[SKLEARN]}"
    for check in checks:
        made = check.made_with or {}
        table.add_row(
            check.version,
            check.status.value,
            made.get(SKLEARN, "unknown"),
            made.get("python", "unknown"),
            "loads" if check.loads else "refused",
        )
    return table


def _versions_table(rows: list[ModelVersion]) -> Table:
    # One line per version on an 80-column terminal: a wrapped date reads as two versions.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # "eval": the items each version's figures were measured on, its own evaluation set (a
    # retrained version's holds its held-out labels, the hard items review sent back): figures
    # of two versions on different sets do not compare, `models compare` scores both on one.
    headers = ("version", "status", "created (UTC)", "rows", "eval", "F1", "auto", "auto prec")
    for header in headers:
        table.add_column(header, no_wrap=True)
    table.caption = "F1 and auto on each version's own evaluation set (eval items)"
    for row in rows:
        auto = row.metrics.get("auto")
        auto = auto if isinstance(auto, dict) else {}
        table.add_row(
            row.version,
            row.status.value,
            f"{row.created_at:%Y-%m-%d %H:%M}",
            str(row.data_rows),
            _figure(row.metrics.get("n"), ".0f"),
            _figure(row.metrics.get("weighted_f1"), ".3f"),
            _figure(auto.get("coverage"), ".0%"),
            _figure(auto.get("precision"), ".3f"),
        )
    return table


def _figure(value: object, spec: str) -> str:
    """A metric as the table shows it; "-" for one that is missing or not a number (nothing
    accepted has no precision), so one odd record does not stop the listing."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return "-"


def _compare_table(outcome: dict) -> Table:
    """Side by side: the summary figures, each class's F1, the slices, the paired counts."""
    a, b, paired = outcome["a"], outcome["b"], outcome["paired"]
    table = Table("", a["version"], b["version"], title=f"{a['version']} against {b['version']}")

    def row(name: str, x: float | None, y: float | None, fmt: str = ".3f") -> None:
        table.add_row(name, *("-" if v is None else format(v, fmt) for v in (x, y)))

    row("weighted F1", a["weighted_f1"], b["weighted_f1"])
    row("accuracy", a["accuracy"], b["accuracy"])
    row("auto: share accepted", a["auto"]["coverage"], b["auto"]["coverage"], ".1%")
    row("auto: precision", a["auto"]["precision"], b["auto"]["precision"])
    # Either side's tags: a tag only A learned (newly approved, say) has figures too.
    for tag in {**b["per_class"], **a["per_class"]}:
        row(f"F1 {tag}", *(side["per_class"].get(tag, {}).get("f1") for side in (a, b)))
    for name, s in b["slices"].items():
        row(f"F1 slice {name} (n={s['n']})", a["slices"].get(name, {}).get("f1"), s["f1"])
    gate = outcome["gate"]
    verdict = "passed" if gate["passed"] else "failed: " + ", ".join(gate["failed"])
    table.caption = (
        f"{paired['items']} items; same tag on {paired['same_tag']}; only {a['version']} right "
        f"on {paired['only_a_right']}, only {b['version']} right on {paired['only_b_right']} "
        f"(McNemar exact p = {paired['mcnemar_p']:.3g}); "
        f"gate for {a['version']} over {b['version']}: {verdict}"
    )
    return table


@models_app.command("compare")
def models_compare(
    a: Annotated[str, typer.Argument(help="Version to judge (e.g. a candidate)")],
    data: Annotated[Path, typer.Option(help="Labelled file neither version trained on")],
    b: Annotated[str | None, typer.Argument(help="Version to judge it against")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON")] = False,
) -> None:
    """Score two versions as they serve on the same labelled items (B: production)."""
    from service.ml.compare import Contender, compare_versions

    # B left out means production; B given empty (a script's $OTHER unset) is a mistake, as
    # the API's ?against= empty is a 422: it used to compare with production all the same.
    for version in (a, b):
        version_name_or_exit(version, action="compare", shown=repr(version))
    settings = settings_or_exit()
    tags = cli_tags(settings)
    input_file_or_exit(data, action="compare", name="--data")
    try:
        examples, checked = load_dataset(data, tags=tags)
        with open_session(settings) as session:
            rows = [
                registry.get_version(session, version=a),
                registry.version_or_production(session, version=b),
            ]
            contenders = [
                Contender.registered(row, artifacts_dir=settings.artifacts_dir) for row in rows
            ]
        outcome = compare_versions(
            *contenders,
            encoder=cli_encoder(settings),
            examples=examples,
            target_precision=settings.target_precision,
        )
    except (DatasetError, TagflowError) as exc:
        print_error("cannot compare:", exc)
        raise typer.Exit(1) from None
    warn_dropped(checked)
    for side in (outcome["a"], outcome["b"]):
        warn_seen_in_training(side["version"], side["seen_in_training"], len(examples))
    if as_json:
        print(json.dumps(outcome, indent=2))
    else:
        console.print(_compare_table(outcome))


def _registry_action(action: str, change: Callable[[Session, TagSet, Path], ModelVersion]) -> None:
    settings = settings_or_exit()
    try:
        tags = cli_tags(settings)
        with open_session(settings) as session:
            before = registry.get_production(session)
            was = before.version if before else None
            row = change(session, tags, settings.artifacts_dir)
    except TagflowError as exc:
        print_error(f"cannot {action}:", exc)
        raise typer.Exit(1) from None
    if row.version == was:  # a promote of production: a retry, safe, and nothing to wait for
        console.print(f"{row.version} is production already: nothing changed")
    else:
        console.print(f"{row.version} is production; running APIs switch within seconds")


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Promote a version to production (its artifact checksum must match)."""
    _registry_action(
        "promote",
        lambda session, tags, artifacts: registry.promote(
            session,
            version=version,
            tags=tags,
            artifacts_dir=artifacts,
            actor=cli_actor("tagflow models promote"),
        ),
    )


@models_app.command("rollback")
def models_rollback(
    current: Annotated[
        str | None,
        typer.Option("--from", help="Roll back only if this version is still production"),
    ] = None,
) -> None:
    """Undo the latest promotion not yet undone; again, and it goes further back."""
    version_name_or_exit(current, action="roll back", shown=f"--from {current!r}")
    _registry_action(
        "roll back",
        lambda session, tags, artifacts: registry.rollback(
            session,
            tags=tags,
            artifacts_dir=artifacts,
            actor=cli_actor("tagflow models rollback"),
            current=current,
        ),
    )


@models_app.command("history")
def models_history(
    limit: Annotated[int, typer.Option(min=1, max=MAX_HISTORY, help="How many changes")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the changes as JSON, as GET /models/history")
    ] = False,
) -> None:
    """Changes of production, newest first: promotions and rollbacks, who asked, and which
    promotion a rollback would undo next."""
    settings = settings_or_exit()
    with open_session(settings) as session:
        changes = production_history.history(session, limit=limit)
    if as_json:
        print(json.dumps({"changes": [c.model_dump(mode="json") for c in changes]}, indent=2))
    elif changes:
        console.print(_history_table(changes))
    else:
        console.print("production has not changed yet")


def _history_table(changes: list[ProductionChangePublic]) -> Table:
    table = Table("#", "at (UTC)", "action", "version", "replaced", "by", "undone by")
    for change in changes:
        table.add_row(
            str(change.id),
            change.at.strftime("%Y-%m-%d %H:%M:%S"),
            change.action.value,
            change.version,
            change.replaced or "-",
            change.actor,
            f"#{change.undone_by}" if change.undone_by else "",
        )
    return table


@models_app.command("recalibrate")
def models_recalibrate(
    version: str,
    dry_run: Annotated[bool, typer.Option(help="Only report what the audit says")] = False,
) -> None:
    """Move a version's auto-acceptance cut where its audit sample shows it should be."""
    from service.calibration import recalibrate_as_configured

    settings = settings_or_exit()
    try:
        with open_session(settings) as session:
            outcome = recalibrate_as_configured(
                session, version=version, settings=settings, apply=not dry_run
            )
    except TagflowError as exc:
        print_error("cannot recalibrate:", exc)
        raise typer.Exit(1) from None
    verb = "moved to" if outcome.applied else "would be" if dry_run else "stays at"
    console.print(
        f"{version}: {outcome.action.value}; cut {outcome.current:.4f} {verb} "
        f"{outcome.proposed:.4f}\n{outcome.reason}"
    )


def _storable_note(value: str) -> str:
    """A note the database can store. A byte that is not UTF-8 in an argument (a Latin-1
    terminal's "é") reaches Python as a lone surrogate, which no database stores."""
    try:
        return storable(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}: is the terminal's encoding UTF-8?") from None


@models_app.command("threshold")
def models_threshold(
    version: str,
    threshold: float,
    note: Annotated[
        str, typer.Option(callback=_storable_note, help="Kept in the version's history")
    ] = "",
) -> None:
    """Set the auto-acceptance cut a version is served with (1.01: everything to review)."""
    settings = settings_or_exit()
    try:
        with open_session(settings) as session:
            row = registry.set_serving_threshold(
                session,
                version=version,
                threshold=threshold,
                evidence={"source": "manual", "note": note},
            )
    except InvalidInputError as exc:  # a cut out of range: a usage error (2), as typer's are
        print_error("cannot set the threshold:", exc)
        raise typer.Exit(2) from None
    except TagflowError as exc:  # no such version
        print_error("cannot set the threshold:", exc)
        raise typer.Exit(1) from None
    if row.status is ModelStatus.PRODUCTION:
        console.print(
            f"{version} is served with cut {threshold}; running APIs switch within seconds"
        )
    else:
        console.print(
            f"{version} ({row.status.value}) will be served with cut {threshold} once promoted"
        )


@models_app.command("export")
def models_export(
    version: str,
    out: Annotated[
        Path | None, typer.Option(help="Bundle file (default: tagflow-VERSION.tar.gz here)")
    ] = None,
) -> None:
    """Pack a version (registry record and artifact) into a file for another deployment."""
    from service.ml.bundle import bundle_name, export_bundle

    settings = settings_or_exit()
    target = out or Path(bundle_name(version))
    try:
        with open_session(settings) as session:
            data = export_bundle(
                session,
                version=version,
                artifacts_dir=settings.artifacts_dir,
                key=settings.bundle_secret,
            )
    except TagflowError as exc:
        print_error("cannot export:", exc)
        raise typer.Exit(1) from None
    # Checked once the version is known to exist: the default file is named after it.
    output_file_or_exit(target, action="export", name="--out")
    try:
        target.write_bytes(data)
    except OSError as exc:  # the disk full, say: the checks above could not tell
        print_error("cannot export:", f"{target}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    signed = "signed" if settings.bundle_key else "not signed: no TAGFLOW_BUNDLE_KEY"
    console.print(f"{version} exported to {target} ({len(data) / 1e6:.1f} MB, {signed})")


@models_app.command("import")
def models_import(
    bundle: Path,
    note: Annotated[
        str, typer.Option(callback=_storable_note, help="Kept with the new version")
    ] = "",
) -> None:
    """Record an exported version as a new candidate here (checked first: checksum, tags)."""
    from service.ml.bundle import import_bundle
    from service.ml.encoder import onnx_file

    settings = settings_or_exit()
    input_file_or_exit(bundle, action="import", name="BUNDLE", piped=True)
    if not settings.bundle_secret:
        # Said before the import, since the import itself loads the pickle: afterwards is late.
        print_warning(
            f"{bundle} is not checked against a bundle key (TAGFLOW_BUNDLE_KEY is not set), and "
            "its model file is a pickle: importing it runs any code its maker put in it, as "
            "this user. Its checksums are its own: they catch damage, not a forger. Import only "
            "a bundle exported by a deployment you run"
        )
    try:
        data = bundle.read_bytes()
        # SIGTERM (`timeout`, a cancelled CI job) stops the import as Ctrl-C does: its staged
        # artifacts are removed on the way out. Its default action left them behind.
        with session_stopped_as_interrupt(settings) as session:
            imported = import_bundle(
                session,
                data=data,
                artifacts_dir=settings.artifacts_dir,
                tags=cli_tags(settings),
                encoder=onnx_file(settings.encoder),
                key=settings.bundle_secret,
                note=note,
            )
    except (TagflowError, OSError) as exc:
        print_error(f"cannot import {bundle}:", exc)
        raise typer.Exit(1) from None
    row = imported.row
    source = row.params["imported"]["version"]
    console.print(f"{row.version}: candidate, imported from {source}; promote it to serve it")
    for warning in imported.warnings:
        print_warning(warning)


# The data a version was made from: its own module (service/cli/lineage.py).
models_app.command("lineage")(lineage.models_lineage)
models_app.command("eval-set")(lineage.models_eval_set)

"""What each `vitrina` command does: call the API, print the outcome (one ``cmd_*`` function per command)."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from vitrina import api
from vitrina.cli.overrides import config_overrides, resolved_config
from vitrina.data.fetch import FetchSettings


def cmd_inspect(args: argparse.Namespace) -> int:
    result = api.inspect(
        args.data, out=args.out, config=resolved_config(args), workers=args.workers, progress=not args.quiet
    )
    summary = result.summary
    print(f"{summary['source']}: {summary['n_images']} readable images in {len(summary['classes'])} classes")
    for split, total in summary["totals"].items():
        print(f"  {split:<12} {total:>7}")
    print(f"  unreadable: {len(summary['skipped'])}   duplicate groups: {len(summary['duplicates'])}"
          f" ({len(summary['cross_split_duplicates'])} across splits)")
    print(f"report: {result.out_dir / 'report.html'}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    chosen = {name: getattr(args, name) for name in api.CleanSettings.__dataclass_fields__ if getattr(args, name, None) is not None}
    settings = api.CleanSettings(**chosen)
    result = api.clean(
        args.data, out=args.out, config=resolved_config(args), settings=settings, exclude_out=args.exclude_out,
        workers=args.workers, progress=not args.quiet, runs_dir=args.runs, log=lambda message: print(message, file=sys.stderr),
    )
    s = result.summary
    print(f"{s['source']}: {s['n_readable']} readable images checked, {len(s['unreadable'])} unreadable")
    print(f"  duplicate groups: {s['exact_duplicate_groups']} exact, {s['near_duplicate_groups']} near ({s['leakage_groups']} across splits)")
    print(f"  likely wrong labels: {s['label_suspects']}   off-topic: {s['off_topic_suspects']}")
    for note in s["notes"]:
        print(f"  note: {note}")
    print(f"report: {result.out_dir / 'report.html'}  (suspects.csv, duplicates.csv, suspects.png)")
    print(f"exclusion list: {result.exclude_file} ({s['excluded']} files; nothing was moved or deleted)"
          + (f", copied to {s['exclude_out']}" if s.get("exclude_out") else ""))
    print(f"train without them: vitrina train {args.data} --exclude {s.get('exclude_out') or result.exclude_file}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    run = api.train(args.data, config=args.config, overrides=config_overrides(args), out=args.out, resume=args.resume,
                    runs_dir=args.runs, progress=not args.quiet)
    if not run.metrics:  # a non-zero rank of a distributed run writes nothing
        return 0
    m = run.metrics
    print(f"{m['model']} ({m['mode']}): {m['split']} accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} "
          f"on {m['n_images']} images; trained in {m['train_seconds']:.0f} s, peak memory {m['peak_rss_mb']:.0f} MB")
    for name, split in m["splits"].items():
        print(f"  {name:<12} accuracy {split['accuracy']:.4f}  ({split['n_images']} images)")
    if "excluded" in m:
        print(f"  left out {m['excluded']['count']} files listed in {m['excluded']['file']}")
    print(f"run folder: {run.run_dir}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    path = api.augment_preview(args.data, config=resolved_config(args), out=args.out, images=args.images, variants=args.variants, runs_dir=args.runs)
    print(f"augmentation preview: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    precision = "int8" if args.int8 else "fp32" if args.fp32 else "auto"
    config = resolved_config(args) if args.config or config_overrides(args) else None  # else the run's own settings
    result = api.export(args.run, args.out, precision=precision, config=config, calibration=args.calibration)
    print(f"ONNX model: {result.onnx_path} ({result.precision}: {result.choice['reason'] if result.choice else ''})")
    other = result.fp32_path if result.precision == "int8" else result.int8_path
    if other is not None:
        print(f"other precision: {other}")
    print(f"model card: {result.card_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    summary = api.predict(
        args.model, args.inputs, args.out, top_k=args.top_k, resume=args.resume, batch_size=args.batch_size,
        workers=args.workers, backend=args.backend, threads=args.threads, progress=not args.quiet,
        log=lambda message: print(message, file=sys.stderr), engine=args.engine, address=args.address,
        column=args.column, fetch=FetchSettings(timeout=args.fetch_timeout, retries=args.fetch_retries,
                                                max_mb=args.max_download_mb, concurrency=args.fetch_concurrency),
    )
    where = summary.out if summary.out is not None else "standard output"
    print(
        f"{summary.n_predicted} images predicted, {summary.n_errors} unreadable"
        + (f", {summary.n_resumed} already in the output" if summary.n_resumed else "")
        + f" in {summary.seconds:.1f} s ({summary.images_per_second:.0f} images/s, {summary.backend} {summary.precision}"
        + (f", {summary.passes_per_photo:.2f} passes per photo with the mirror average" if summary.passes_per_photo > 1 else "")
        + f"); rows: {where}",
        file=sys.stderr,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = api.list_models()
    print(f"{'name':<20} {'family':<11} {'params':>9} {'input':>9}  {'resize':<12} description")
    for row in rows:
        size = f"{row['channels']}x{row['input_size']}"
        print(f"{row['name']:<20} {row['family']:<11} {row['params'] / 1e6:>8.2f}M {size:>9}  {row['resize']:<12} {row['description']}")
    print("\nAny timm architecture is available as timm:NAME with --weights PATH (or hub weights when online).")
    return 0


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "prune":
        removed = api.prune_cache(args.cache_dir, older_than_days=args.older_than, max_gb=args.max_size, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for entry in removed:
            age = (time.time() - entry["last_used"]) / 86400
            print(f"  {verb} {entry['kind']:<8} {_gb(entry['bytes']):>10}  unused for {age:.1f} days  {entry['path']}")
        print(f"{verb} {len(removed)} entries, {_gb(sum(e['bytes'] for e in removed))}")
    summary = api.cache_summary(args.cache_dir)
    print(f"cache: {summary['folder']} ({_gb(summary['bytes'])})")
    for kind, info in summary["kinds"].items():
        last = "never" if info["last_used"] is None else f"{(time.time() - info['last_used']) / 86400:.1f} days ago"
        print(f"  {kind:<9} {info['entries']:>5} entries {_gb(info['bytes']):>10}  last used {last}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    data = api.demo_data()
    print(f"vitrina demo on the embedded clothing photos ({data})")
    print("step 1/3: inspect the data")
    inspected = api.inspect(data, runs_dir=args.runs, progress=not args.quiet)
    print(f"  {inspected.summary['n_images']} images, {len(inspected.summary['classes'])} classes; "
          f"report: {inspected.out_dir / 'report.html'}")
    print("step 2/3: train a classifier (efficientnet_lite0, fine-tuned) and evaluate it on the test photos")
    run = api.train(data, api.demo_config(), runs_dir=args.runs, progress=not args.quiet)
    m = run.metrics
    print(f"  {m['split']} accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} on {m['n_images']} photos; "
          f"trained in {m['train_seconds']:.0f} s")
    print(f"  run folder: {run.run_dir} (report: {run.run_dir / 'report.html'})")
    if args.no_serve:
        return 0
    print("step 3/3: serve the model: a web page that checks a seller's photo against the chosen category")
    with contextlib.suppress(KeyboardInterrupt):
        api.serve(run.run_dir, host=args.host, port=args.port, on_ready=announce_server, log_level="warning")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = api.evaluate(args.model, args.data, split=args.split, out=args.out, overrides=config_overrides(args), tta=args.tta, progress=not args.quiet)
    m = result.metrics
    print(f"{m['model']} ({m['mode']}) on {m['split']}: {m['n_images']} images ({m['n_skipped']} unreadable, skipped)")
    tops = "".join(f", top-{k} {m[f'top{k}_accuracy']:.4f}" for k in (3, 5) if f"top{k}_accuracy" in m)
    print(f"  accuracy {m['accuracy']:.4f}{tops}")
    print(f"  macro F1 {m['macro_f1']:.4f}, weighted F1 {m['weighted_f1']:.4f}, expected calibration error {m['ece']:.4f}")
    if "coarse_accuracy" in m:
        print(f"  coarse-class accuracy {m['coarse_accuracy']:.4f}")
    decisions = m.get("decisions") or {}
    if "uncertain_share" in decisions:
        unknown = f" ({decisions['unknown_share']:.1%} unknown)" if "unknown_share" in decisions else ""
        print(f"  marked uncertain {decisions['uncertain_share']:.1%}{unknown}; accuracy of the rest {decisions['accuracy_when_sure']:.4f}")
    if "tta" in m:
        print(f"  with test-time augmentation ({m['tta']['method']}): accuracy {m['tta']['accuracy']:.4f}, macro F1 {m['tta']['macro_f1']:.4f}")
    if "note" in m:
        print(f"  note: {m['note']}")
    print(f"evaluation folder: {result.out_dir} (report.html, mistakes.html, metrics.json)")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    outcome = api.promote(args.new, args.over, args.data, split=args.split, alpha=args.alpha, max_drop=args.max_drop,
                          force=args.force, allow_class_change=args.allow_class_change, log=lambda m: print(m, file=sys.stderr))
    c = outcome.comparison
    print(f"{c.photos} photos of {c.split} ({c.unreadable} unreadable, left out)")
    print(f"  accuracy  served {c.accuracy_old:6.2f}%   new {c.accuracy_new:6.2f}%   change {c.accuracy_new - c.accuracy_old:+.2f} points")
    print(f"  macro F1  served {c.macro_f1_old:6.4f}    new {c.macro_f1_new:6.4f}")
    print(f"  only the served model right: {c.only_old_right} photos; only the new one: {c.only_new_right}; "
          f"McNemar one-sided p (new worse) = {c.p_worse:.4g}")
    changed = sorted(c.per_class, key=lambda row: row["change"])
    for row in [r for r in changed if r["change"] != 0][:5] + [r for r in changed[::-1] if r["change"] > 0][:5]:
        print(f"    {row['class']:<24} {row['photos']:>5} photos  {row['accuracy_old']:6.2f}% -> {row['accuracy_new']:6.2f}%")
    for reason in outcome.reasons:
        print(f"  refused: {reason}")
    if outcome.promoted:
        print(f"promoted{' (forced)' if outcome.forced else ''}: {args.new} now serves at {outcome.served}; "
              f"the previous model is {outcome.previous} (roll back: move it back)")
    else:
        print(f"not promoted: {outcome.served} is unchanged")
    return 0 if outcome.promoted else 1


def cmd_review_export(args: argparse.Namespace) -> int:
    result = api.review_export(args.db, args.out)
    mix = ", ".join(f"{label} {count}" for label, count in sorted(result.classes.items()))
    print(f"{result.photos} reviewed photos in {result.out / 'labels.csv'} ({mix or 'none'}); "
          f"{result.off_topic} off-topic in {result.out / 'off_topic.csv'}")
    if result.disputed_checks:
        print(f"  {result.disputed_checks} checks left out: their reviews disagree (settle them in the review queue)")
    if result.missing_photos:
        print(f"  {result.missing_photos} reviewed photos were not kept by the log (vitrina serve --store-images) and are missing")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    result = api.compare(args.data, args.configs, out=args.out, overrides=config_overrides(args), runs_dir=args.runs, progress=not args.quiet)
    print()
    print((result.out_dir / "leaderboard.md").read_text(encoding="utf-8"), end="")
    print(f"{len(result.rows)} configurations trained and evaluated on {result.split} in {result.total_seconds / 60:.1f} min")
    print(f"leaderboard: {result.out_dir / 'leaderboard.md'} (also .csv, .png; curves.png)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    overrides = config_overrides(args)
    config = resolved_config(args) if args.config or overrides else None
    search = [name.strip() for name in args.search.split(",") if name.strip()] if args.search else None
    result = api.tune(
        args.data, config, out=args.out, trials=args.trials, minutes=args.minutes, search=search,
        resume=args.resume, runs_dir=args.runs,
    )
    c = result.counts
    print(f"{c['complete']} trials complete, {c['pruned']} pruned, {c['fail']} failed")
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(f"best: trial {result.best_trial}, validation accuracy {result.best_value:.4f} ({params})")
    if result.default_value is not None:
        margin = result.best_value - result.default_value
        print(f"default config: validation accuracy {result.default_value:.4f}; margin of the best {margin * 100:+.2f} points")
    print(f"best config: {result.best_config}  (train it: vitrina train {args.data} --config {result.best_config})")
    print(f"study: {result.out_dir / 'study.db'} (resume with --out {result.out_dir} --resume)")
    return 0


def announce_server(info: Any) -> None:
    """Print what a starting server serves and the URL to open (``info``: an ``api_serve.ServeInfo``)."""
    access = "API keys required" if info.authentication else "no API keys (open to anyone who can reach it)"
    rate = f"{info.rate_limit:g} requests/s per client" if info.rate_limit else "no rate limit"
    print(f"vitrina serve: {info.model_name}, {info.classes} classes, version {info.model_version} ({info.backend}, "
          f"{info.workers} worker{'s' if info.workers > 1 else ''})")
    print(f"  moderation log: {info.database}; {access}; {rate}")
    print(f"  open {info.url} in a browser (API docs: {info.url}docs, moderation: {info.url}moderation); Ctrl+C stops the server",
          flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how a server ends, once its requests are answered
        api.serve(
            args.model, args.host, args.port, args.workers, on_ready=announce_server, backend=args.backend, threads=args.threads,
            database=args.db, store_images=args.store_images, stored_photo_mb=args.stored_photo_mb,
            photo_retention_days=args.photo_retention_days, api_keys_file=args.api_keys, rate_limit=args.rate_limit,
            rate_burst=args.burst, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, max_photos=args.max_photos,
            batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, queue_limit=args.queue_limit,
            reload_interval=args.reload_interval, confidence=args.confidence, max_decode_pixels=args.max_decode_pixels,
            db_timeout=args.db_timeout, metrics_public=args.metrics_public, trusted_proxies=args.trusted_proxies,
            header_timeout=args.header_timeout, body_timeout=args.body_timeout, max_connections=args.max_connections,
            model_name=args.model_name,
        )
    print("vitrina serve: stopped", flush=True)
    return 0

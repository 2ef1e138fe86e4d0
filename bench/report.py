"""Table, JSON summary and plot from a pytest-benchmark JSON file of bench/test_bench_*.py.

    python bench/report.py BENCH.json [--stat median|min|mean] [--out DIR | --no-write] [--stem NAME]

Prints one table, a block per benchmark group: time per call, throughput in bytes/s and weights/s
(from ``extra_info``'s ``bytes`` and ``weights``, see bench/conftest.py), bits per weight, and the
speedup over the group's baseline row (dense F.linear) where it has one. A run made in full mode
(``pytest bench/ --bench-full``) also writes ``<stem>.json`` (the rows) and ``<stem>.png`` to
bench/results/; ``--out DIR`` writes them to DIR in either mode, ``--no-write`` never.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
KIND_ORDER = {"codec": 0, "linear": 1, "gpu": 2}
OP_ORDER = {"encode": 0, "decode": 1, "forward": 2}
STATS = ("median", "min", "mean")


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def rows_from(data: dict, stat: str = "median") -> list[dict]:
    """One row per benchmark, in group order; throughputs are None where extra_info lacks bytes / weights."""
    rows = []
    for b in data["benchmarks"]:
        ex = b.get("extra_info") or {}
        t = float(b["stats"][stat])
        r = {"group": b.get("group") or "(no group)", "kind": ex.get("kind", ""), "op": ex.get("op", ""),
             "method": ex.get("method", b["name"]), "name": b["fullname"], "seconds": t,
             "rounds": b["stats"]["rounds"], "iterations": b["stats"].get("iterations", 1),
             "weights": ex.get("weights"), "bytes": ex.get("bytes"),
             "bytes_per_s": ex["bytes"] / t if ex.get("bytes") and t > 0 else None,
             "weights_per_s": ex["weights"] / t if ex.get("weights") and t > 0 else None,
             "bits_per_weight": ex.get("bits_per_weight"), "baseline": bool(ex.get("baseline")),
             "speedup_vs_baseline": None,
             "extra": {k: v for k, v in ex.items() if k not in ("kind", "op", "method", "weights", "bytes",
                                                                 "bits_per_weight", "baseline")}}
        rows.append(r)
    base = {r["group"]: r["seconds"] for r in rows if r["baseline"]}
    for r in rows:
        if r["group"] in base and r["seconds"] > 0:
            r["speedup_vs_baseline"] = base[r["group"]] / r["seconds"]
    # groups by kind, then in run order with a data set's encode and decode together; in a group the
    # baseline first, then the fastest
    def subject(r):
        return r["group"][:-len(r["op"])].rstrip() if r["op"] and r["group"].endswith(r["op"]) else r["group"]

    order = {}
    for r in rows:
        order.setdefault(subject(r), len(order))
    rows.sort(key=lambda r: (KIND_ORDER.get(r["kind"], 9), order[subject(r)], OP_ORDER.get(r["op"], 9), r["group"],
                             not r["baseline"],
                             r["seconds"]))
    return rows


def si(v: float | None, unit: str) -> str:
    """3 significant digits with an SI prefix: 1.23 GB/s, 456 MB/s."""
    if v is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(v) >= scale or scale == 1.0:
            x = v / scale
            digits = 2 if x < 10 else (1 if x < 100 else 0)
            return f"{x:.{digits}f} {prefix}{unit}"
    return "-"  # pragma: no cover


def per_call(t: float) -> str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def table(rows: list[dict], stat: str) -> str:
    head = (f"{'method':26s} {stat + ' / call':>14s} {'bytes/s':>11s} {'weights/s':>12s} "
            f"{'bits/weight':>11s} {'vs base':>8s}")
    lines, last = [head, "-" * len(head)], None
    for r in rows:
        if r["group"] != last:
            if last is not None:
                lines.append("")
            lines.append(r["group"])
            last = r["group"]
        bpw = "-" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.3f}"
        speed = "-" if r["speedup_vs_baseline"] is None else f"{r['speedup_vs_baseline']:.3g}x"
        lines.append(f"  {r['method']:24s} {per_call(r['seconds']):>14s} {si(r['bytes_per_s'], 'B/s'):>11s} "
                     f"{si(r['weights_per_s'], 'w/s'):>12s} {bpw:>11s} {speed:>8s}")
    return "\n".join(lines)


def environment(data: dict) -> dict:
    mi = data.get("machine_info", {})
    env = dict(mi.get("pycodec_bench", {}))
    env.setdefault("cpu", (mi.get("cpu") or {}).get("brand_raw", mi.get("processor", "")))
    env.setdefault("cores", (mi.get("cpu") or {}).get("count"))
    env["python"] = mi.get("python_version")
    env["commit"] = data.get("commit_info", {}).get("id")
    env["dirty"] = data.get("commit_info", {}).get("dirty")
    env["datetime"] = data.get("datetime")
    env["pytest_benchmark"] = data.get("version")
    return env


def default_stem(env: dict, rows: list[dict]) -> str:
    if any(r["kind"] == "gpu" for r in rows) and env.get("cuda_device"):
        tag = re.sub(r"[^A-Za-z0-9]+", "_", env["cuda_device"]).strip("_").lower()
    else:
        tag = f"cpu_{env.get('cores') or 'n'}core"
    return f"bench_{tag}"


def plot(rows: list[dict], env: dict, path: Path) -> None:
    """One panel per group: codec groups in MB/s of symbols, forwards in M weights/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in rows if r["weights_per_s"]))
    cols = min(3, len(groups)) or 1
    nrows = -(-len(groups) // cols) or 1
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 0.35 * 8 * nrows + 1), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax, g in zip(axes.flat, groups):
        rs = [r for r in rows if r["group"] == g and r["weights_per_s"]]
        codec = rs[0]["kind"] == "codec"
        vals = [(r["bytes_per_s"] if codec else r["weights_per_s"]) / 1e6 for r in rs]
        ax.barh(range(len(rs)), vals, color=["grey" if r["baseline"] else "tab:blue" for r in rs])
        ax.set_yticks(range(len(rs)), [r["method"] for r in rs], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(g, fontsize=8)
        if max(vals) > 30 * min(vals) > 0:  # a dense GEMV beside a decode-per-call forward: orders of magnitude
            ax.set_xscale("log")
        ax.set_xlabel("MB/s of symbols" if codec else "M weights/s", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    title = f"{env.get('cpu', '')}, {env.get('cores', '?')} cores"
    if env.get("cuda_device"):
        title += f"; {env['cuda_device']}"
    fig.suptitle(f"pycodec benchmarks ({env.get('mode', '?')} mode): {title}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # leave the title its 0.4 inch
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[dict], env: dict, stat: str, source: str, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"source": source, "stat": stat, "environment": env, "rows": rows}
    paths = [out_dir / f"{stem}.json"]
    paths[0].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    try:
        plot(rows, env, out_dir / f"{stem}.png")
        paths.append(out_dir / f"{stem}.png")
    except ImportError as e:  # matplotlib is a bench extra: the JSON stands without the picture
        print(f"report: no plot ({e})", file=sys.stderr)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="a file written by pytest --benchmark-json (or --benchmark-autosave)")
    ap.add_argument("--stat", choices=STATS, default="median", help="which per-call statistic (default: median)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="write <stem>.json and <stem>.png here (any mode)")
    where.add_argument("--no-write", action="store_true", help="print the table only, even for a full run")
    ap.add_argument("--stem", help="file name stem (default: bench_cpu_<cores>core, or bench_<gpu> with GPU rows)")
    a = ap.parse_args(argv)

    data = load(a.json)
    rows = rows_from(data, a.stat)
    env = environment(data)
    print(f"{env.get('mode', '?')} mode; {env.get('cpu')}, {env.get('cores')} cores"
          + (f"; {env['cuda_device']}" if env.get("cuda_device") else "") + f"; commit {str(env['commit'])[:10]}"
          + (" (dirty)" if env.get("dirty") else ""))
    print(table(rows, a.stat))
    out = a.out if a.out else (RESULTS_DIR if env.get("mode") == "full" and not a.no_write else None)
    if out is not None and not a.no_write:
        for p in write(rows, env, a.stat, str(a.json), out, a.stem or default_stem(env, rows)):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a track's time goes, stage by stage (``make bench-track``): wall time and the tokens each stage sampled,
scored and trained (its completion record, ``rlhf_kit/core/work.py``), tokens per second, and this CPU's own
float32 and bf16 matmul throughput measured in the same run, so that a figure means the same on every machine.

Two commands:

- ``cpu``: this CPU's flags (AMX, AVX512-BF16) and matmul GFLOP/s in float32 and bf16, written to ``--out``;
- ``table``: the per-stage table of a run folder (``runs/real``), with the ``cpu`` file's figures, printed and
  written to ``<run>/track.md``.

    python benchmarks/track.py cpu --out runs/real/cpu.json
    python benchmarks/track.py table runs/real --cpu runs/real/cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_kit.core.runs import MARKER, write_atomic  # noqa: E402
from rlhf_kit.core.stages import STAGES  # noqa: E402
from rlhf_kit.core.work import KINDS  # noqa: E402


def cpu(args) -> None:
    """Measure and write this CPU's flags and matmul throughput."""
    from rlhf_kit.integrations.hardware import cpu_flags, matmul_gflops

    flags = cpu_flags() or set()
    record = {"flags": sorted(flags & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}),
              "gflops": {d: round(matmul_gflops(d), 1) for d in ("float32", "bfloat16")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(record, indent=1))
    print(json.dumps(record))


def stage_records(run: Path) -> list[tuple[str, dict]]:
    """(stage folder, completion record) of every finished stage under ``run``, in pipeline order, sub-evaluations
    (``heldout-types/eval``) after the stages."""
    found = {p.parent.relative_to(run).as_posix(): json.loads(p.read_text()) for p in run.rglob(MARKER)
             if "checkpoint-" not in p.parent.name}
    order = {name: i for i, name in enumerate(STAGES)}
    return sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def table(run: Path, cpu_record: dict | None) -> str:
    """The markdown table of ``run``'s stages."""
    head = ["stage", "wall s", *(f"tokens {k}" for k in KINDS), "tokens/s"]
    lines = [f"# Where {run}'s time goes", ""]
    if cpu_record:
        g = cpu_record["gflops"]
        lines += [f"CPU flags: {', '.join(cpu_record['flags']) or 'none of AMX / AVX512-BF16'}; matmul "
                  f"{g['float32']:.0f} GFLOP/s float32, {g['bfloat16']:.0f} GFLOP/s bf16 (1024 x 1024, this run).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total_wall, totals = 0.0, dict.fromkeys(KINDS, 0)
    for name, rec in stage_records(run):
        counts = [rec.get(f"tokens_{k}") for k in KINDS]
        wall = rec["wall_seconds"]
        total_wall += wall
        for k, c in zip(KINDS, counts):
            totals[k] += c or 0
        known = [c for c in counts if c is not None]
        rate = f"{sum(known) / wall:,.0f}" if known and wall > 0 else "-"
        lines.append(f"| {name} | {wall:,.0f} | " + " | ".join("-" if c is None else f"{c:,}" for c in counts)
                     + f" | {rate} |")
    lines.append(f"| **all** | **{total_wall:,.0f}** ({total_wall / 60:.1f} min) | "
                 + " | ".join(f"{totals[k]:,}" for k in KINDS) + " | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cpu", help="measure this CPU's matmul throughput")
    c.add_argument("--out", required=True)
    t = sub.add_parser("table", help="the per-stage table of a run folder")
    t.add_argument("run")
    t.add_argument("--cpu", help="the cpu command's file (measured in the same run)")
    args = parser.parse_args(argv)
    if args.command == "cpu":
        return cpu(args)
    run = Path(args.run)
    if not run.is_dir():
        sys.exit(f"error: {run} is not a run folder; pass the folder `make real` writes (runs/real)")
    cpu_record = json.loads(Path(args.cpu).read_text()) if args.cpu and Path(args.cpu).is_file() else None
    text = table(run, cpu_record)
    write_atomic(run / "track.md", text)
    print(text)


if __name__ == "__main__":
    main()

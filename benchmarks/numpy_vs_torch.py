"""Issue 2's CPU benchmark: cnn_gpu's NumPy backend against PyTorch's CPU ops, side by side in one
process on the same inputs, with the same number of threads for both (default 2).

Rows: conv2d forward + backward (dx, dw, db) on the shapes (N, C, H, W, K, R) of issue 2 (stride 1,
padding R//2), and a full training step (forward, loss, backward, SGD step) of the default model on a
batch of digits-sized images. Prints numpy/torch per row against the targets (<= 1.2 per conv shape,
<= 1.0 for the training step). Timing as in cnn_gpu.bench (warm-up, rotated random inputs, median).

    python benchmarks/numpy_vs_torch.py [--threads 2] [--repeat N] [--json PATH]
"""
import argparse
import os
import sys

TARGETS = {"conv2d_fwd_bwd": 1.2, "train_step": 1.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads for both NumPy's BLAS and PyTorch")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per row (default: ~0.3 s worth)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # BLAS thread pools read these once, when NumPy (and torch) are first imported.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from cnn_gpu import bench

    reason = bench.device_unavailable("torch")
    if reason:
        print(f"numpy_vs_torch: {reason}", file=sys.stderr)
        return 2
    bench.set_threads(args.threads)
    cases = bench.make_cases("cpu", ops=tuple(TARGETS))
    devices = bench.make_devices(["numpy", "torch"])
    rows = bench.finish_rows(list(bench.run_cases(cases, devices, "float32", args.repeat)))
    times = {(r.op, r.shape, r.device): r.median_ms for r in rows}

    header = ("op", "shape", "numpy ms", "torch ms", "numpy/torch", "target", "")
    table = [header]
    for case in cases:
        numpy_ms, torch_ms = times[(case.op, case.label, "numpy")], times[(case.op, case.label, "torch")]
        ratio = numpy_ms / torch_ms
        target = TARGETS[case.op]
        table.append((case.op, case.label, f"{numpy_ms:.3f}", f"{torch_ms:.3f}", f"{ratio:.2f}", f"<= {target}",
                      "ok" if ratio <= target else "SLOWER"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"NumPy backend vs PyTorch CPU, float32, {args.threads} threads each; conv rows are forward + backward "
          f"(N,C,H,W,K,R,stride,pad)")
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if args.json:
        bench.write_json(rows, args.json, dict(bench.environment(), threads=args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Network interpolation (ESRGAN, Wang et al. 2018): a generator whose every weight is
(1 - ALPHA) x A + ALPHA x B, for two models of the same config, typically a PSNR model (A) and the
adversarial model fine-tuned from it (B).  ALPHA 0 is A, 1 is B; in between trades fidelity and
steadiness for texture.  The output's metadata names both sources and ALPHA.

Usage: python scripts/interpolate_weights.py A B --alpha 0.7 -o OUT.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vsr.errors import VsrError  # noqa: E402
from vsr.files import written_whole  # noqa: E402
from vsr.weights import interpolate, resolve_weights, save_generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    try:
        model, record = interpolate(resolve_weights(args.a), resolve_weights(args.b), args.alpha)
        with written_whole(args.output, mode=0o644) as tmp:
            save_generator(tmp, model, training=record)
    except VsrError as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {args.output} = {1 - args.alpha:g} x {args.a} + {args.alpha:g} x {args.b}")


if __name__ == "__main__":
    main()

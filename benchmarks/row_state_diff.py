"""Where two accuracy-benchmark rows' saved states differ: tensors and per-unit losses.

    python benchmarks/row_state_diff.py ROW_A ROW_B [--stage reconstruct]

Compares the two rows' ``stage_<stage>.pth`` tensor by tensor over the keys both hold (every
dtype: the learned rounding masks are not floats), grouped by the module part (backbone,
neck, heads), and prints each reconstructed unit's loss before / after and the bytes one item
kept for backward from the two ``calibration_report.json``. Two rows of the same method and
seed whose backbones differ trained on different float rounding (block reconstruction is
chaotic: see ``tests/test_demo.py::test_backbone_reconstruction_does_not_depend_on_the_scope``
for the same code at both scopes).
"""
import argparse
import json
import os.path as osp
from collections import Counter

import torch

from mmq.calibration.quantized_state import load_partial_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('rows', nargs=2, help='two rows\' work dirs')
    parser.add_argument('--stage', default='reconstruct', help='which stage_<stage>.pth')
    args = parser.parse_args()
    states = []
    for row in args.rows:
        partial = load_partial_state(osp.join(row, f'stage_{args.stage}.pth'))
        if partial is None:
            raise SystemExit(f'{row} has no stage_{args.stage}.pth')
        states.append(partial['state_dict'])
    a, b = states
    common = [k for k in a if k in b]
    differ = [k for k in common if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    print(f'{len(common)} tensors in both ({len(a) - len(common)} / {len(b) - len(common)} '
          f'only in one), {len(differ)} differ')
    for part, n in sorted(Counter(k.split('.')[0] for k in differ).items()):
        kinds = Counter(k.rsplit('.', 1)[-1] for k in differ if k.split('.')[0] == part)
        print(f'  {part}: {n} ({dict(kinds)})')
    reports = [json.load(open(osp.join(row, 'calibration_report.json'))) for row in args.rows]
    units = [{u['unit']: u for u in r['units'] if u.get('stage') == 'reconstruct'}
             for r in reports]
    print('| unit | loss before A / B | loss after A / B | backward bytes per item A / B |')
    print('|---|---|---|---|')
    for name, ua in units[0].items():
        ub = units[1].get(name)
        if ub is None:
            continue
        print(f"| {name} | {ua['loss_before']:.4g} / {ub['loss_before']:.4g} | "
              f"{ua['loss_after']:.4g} / {ub['loss_after']:.4g} | "
              f"{list(ua.get('backward_bytes_per_item', {}).values())} / "
              f"{list(ub.get('backward_bytes_per_item', {}).values())} |")


if __name__ == '__main__':
    main()

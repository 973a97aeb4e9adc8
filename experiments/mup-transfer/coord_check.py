"""
The coordinate check of muP (Yang et al. 2022, sec. 6 and microsoft/mup's README): train models of growing width for
a few steps at one learning rate and watch the size of each activation. Under a parametrization whose optimum
transfers, mean |activation| stays put as the width grows; under 'sp' the outputs of the blocks blow up with width
(AdamW moves every weight entry by ~lr, so a matrix's update changes its output by ~lr x fan-in).

    python -m experiments.mup-transfer.coord_check                      # sp and mup, widths 64..1024, 10 steps
    python -m experiments.mup-transfer.coord_check --widths 64 128 256 --steps 5 --json coord.json

Printed: per parametrization and activation (the token embedding, each block's attention and MLP outputs before the
residual add, the logits), mean |activation| at the last step for each width, and the growth of log2 of it per
doubling of width (the least-squares slope over the widths). coord_check.png beside this file, when matplotlib is
present: every step's curve, width on the x axis, as the muP paper's figures. Models: n_layer 2, head size 16 (heads
added with width), the base width 64, train.py's AdamW and knobs at a constant lr, no clipping, float32, CPU, the
same batches for every model (the quick-start data, or random bytes without it).
"""
import argparse
import os
from types import SimpleNamespace

import numpy as np
import torch

from model import GPT, GPTConfig
from pretrain.configurator import script_defaults
from pretrain.data import TokenLoader
from pretrain.scaling.plots import pyplot
from pretrain.training import configure_optimizer

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = script_defaults(os.path.join(os.path.dirname(os.path.dirname(HERE)), 'train.py'))


def batches(data_dir, steps, batch_size, block_size, seed=0):
    """The same `steps` (x, y) batches for every model: the data's first training sequences, or random bytes."""
    if data_dir and os.path.isdir(data_dir):
        loader = TokenLoader(data_dir, 'train', block_size, seed=seed)
        return [loader.batch(s * batch_size, batch_size, torch.device('cpu')) for s in range(steps)]
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 256, (steps, batch_size, block_size + 1), generator=g)
    return [(b[:, :-1], b[:, 1:]) for b in xy]


def measure(parametrization, width, data, lr, n_layer=2, head_dim=16, base_n_embd=64, seed=0):
    """{activation name: [mean |activation| at step 1, 2, ...]}: each step's forward before its update."""
    config = GPTConfig(block_size=data[0][0].size(1), vocab_size=257, n_layer=n_layer, n_head=width // head_dim,
                       n_embd=width, parametrization=parametrization, base_n_embd=base_n_embd)
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = configure_optimizer(model, SimpleNamespace(**{**TRAIN, 'learning_rate': lr}), torch.device('cpu'))
    record = {}
    watch = {'embedding': model.transformer.wte, 'logits': model.lm_head}
    for i, block in enumerate(model.transformer.h):
        watch.update({f'attn.{i}': block.attn, f'mlp.{i}': block.mlp})
    for name, module in watch.items():
        module.register_forward_hook(lambda m, args, out, name=name:
                                     record.setdefault(name, []).append(out.detach().abs().mean().item()))
    for x, y in data:
        _, loss = model(x, y, return_logits=False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {name: record[name] for name in watch}


def slope(widths, values):
    """Growth of log2(value) per doubling of width: the least-squares slope of log2 value on log2 width."""
    return float(np.polyfit(np.log2(widths), np.log2(values), 1)[0])


def coord_check(parametrizations, widths, data, lr, seeds=(0,), **kw):
    """-> {parametrization: {'values': {activation: {width: [per step]}}, 'slopes': {activation: slope}}}, the
    values averaged over seeds."""
    out = {}
    for p in parametrizations:
        runs = {w: [measure(p, w, data, lr, seed=s, **kw) for s in seeds] for w in widths}
        names = list(runs[widths[0]][0])
        values = {n: {w: np.mean([r[n] for r in runs[w]], axis=0).tolist() for w in widths} for n in names}
        out[p] = {'values': values, 'slopes': {n: slope(widths, [values[n][w][-1] for w in widths]) for n in names}}
    return out


def report(result, widths):
    lines = []
    for p, r in result.items():
        lines += [f"{p}: mean |activation| at the last step, and its growth in log2 per doubling of width",
                  f"  {'activation':<10}" + ''.join(f"{w:>10}" for w in widths) + f"{'slope':>9}"]
        for n, per_width in r['values'].items():
            lines.append(f"  {n:<10}" + ''.join(f"{per_width[w][-1]:>10.4g}" for w in widths)
                         + f"{r['slopes'][n]:>+9.2f}")
    return '\n'.join(lines)


def figure(result, widths, path):
    plt = pyplot()        # plots.py: matplotlib with the Agg backend, or None (with a warning) without it
    if plt is None:
        return None
    names = list(next(iter(result.values()))['values'])
    fig, axes = plt.subplots(len(result), len(names), figsize=(2.6 * len(names), 2.6 * len(result)), squeeze=False)
    for row, (p, r) in zip(axes, result.items()):
        for ax, n in zip(row, names):
            steps = len(r['values'][n][widths[0]])
            for t in range(steps):
                ax.plot(widths, [r['values'][n][w][t] for w in widths], marker='.', lw=1,
                        color=plt.cm.viridis(t / max(1, steps - 1)),
                        label=f'step {t + 1}' if t in (0, steps - 1) else None)
            ax.set_xscale('log', base=2)
            ax.set_yscale('log')
            ax.set_title(f"{p}: {n} ({r['slopes'][n]:+.2f})", fontsize=9)
            ax.set_xlabel('width', fontsize=8)
        row[0].set_ylabel('mean |activation|', fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--parametrizations', nargs='+', default=['sp', 'mup'])
    ap.add_argument('--widths', nargs='+', type=int, default=[64, 128, 256, 512, 1024])
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--lr', type=float, default=1e-2)
    ap.add_argument('--seeds', type=int, default=3)
    ap.add_argument('--batch_size', type=int, default=8)
    ap.add_argument('--block_size', type=int, default=64)
    ap.add_argument('--data_dir', default='data/shakespeare_bytes')
    ap.add_argument('--json', help='also write the numbers here')
    ap.add_argument('--figure', default=os.path.join(HERE, 'coord_check.png'))
    a = ap.parse_args()
    data = batches(a.data_dir, a.steps, a.batch_size, a.block_size)
    result = coord_check(a.parametrizations, a.widths, data, a.lr, seeds=range(a.seeds))
    print(report(result, a.widths))
    if a.json:
        from pretrain.data import write_json
        write_json(a.json, dict(args={k: v for k, v in vars(a).items() if k not in ('json', 'figure')}, result=result))
    if a.figure and figure(result, a.widths, a.figure):
        print(f"figure: {a.figure}")

"""Tests for bench.py end to end on the CPU: every field of a record, real shards, --peak_tflops, one-line errors,
the memory estimate (--memory) and strong/weak scaling under torchrun. The peak table, the measured CPU peak and MFU
are runtime.py's (tests/test_runtime.py)."""
import json
import os
from functools import partial

import numpy as np
import pytest

import bench
import conftest
from model import GPTConfig
from pretrain.accounting import train_memory
from conftest import ROOT, write_shard

# a model small enough that a whole run takes about a second on one shared core
# (pinned to the CPU: on a machine with a GPU, device='auto' would pick it and the CPU expectations would not hold)
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=2', '--warmup_steps=1',
        '--timed_steps=2', '--repeats=2', '--sample_tokens=4', '--sample_prompt=4', '--dtype=float32', '--device=cpu']


run_main = partial(conftest.run_cli, bench.main)   # (argv, capsys) -> (the record bench.main returns, stdout, stderr)


# -----------------------------------------------------------------------------
# end to end on the CPU

def test_tiny_cpu_run_produces_every_field(capfd):
    record, out, err = run_main([*TINY, '--data=random', '--vocab_size=64', '--json=-'], capfd)
    assert json.loads(out) == json.loads(json.dumps(record))  # stdout is exactly one JSON object, on one line
    assert out.count('\n') == 1 and 'tokens/s' in err         # the table went to stderr
    for key, value in record.items():
        assert value is not None, key
    st = record['step_time_s']
    assert len(st['repeats']) == 2 and st['min'] <= st['median'] <= st['max']
    assert record['tokens_per_step'] == 2 * 32
    assert record['tokens_per_s'] == pytest.approx(64 / st['median'])
    p = record['phases_s']
    assert set(p) == {'data', 'forward', 'backward', 'optimizer', 'sum', 'step'}
    assert all(v >= 0 for v in p.values()) and p['forward'] > 0
    assert p['sum'] == pytest.approx(sum(p[k] for k in ('data', 'forward', 'backward', 'optimizer')))
    assert set(record['mfu']) == set(record['flops_per_token']) == {'palm', 'kaplan'}
    fpt = record['flops_per_token']['palm']
    assert record['tflops_per_device']['palm'] == pytest.approx(fpt * record['tokens_per_s'] / 1e12)
    peak = record['peak_tflops_per_device'] * 1e12
    assert record['mfu']['palm'] == pytest.approx(fpt * record['tokens_per_s'] / peak)
    assert record['flops_per_token']['palm'] > record['flops_per_token']['kaplan']  # PaLM counts the lm_head
    assert record['peak_source'].startswith('measured') and record['peak_memory_bytes'] > 10 * 2 ** 20
    s = record['sampling']
    assert s['new_tokens'] == 4 and s['kv_cache_tok_s'] > 0 and s['no_cache_tok_s'] > 0
    assert s['kv_cache_first_pass_tok_s'] > 0 and s['no_cache_first_pass_tok_s'] > 0   # reported apart
    # the estimate beside the measured peak: this tiny model, DDP (one process), float32, AdamW
    tiny = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=64, pos_emb='rope')   # train.py's
    assert record['memory_estimate'] == {'parallel': 'ddp', 'activation_checkpointing': False,
                                         **train_memory(tiny, 2, 1, compute_dtype='float32'),
                                         'leaves_out': bench.MEMORY_LEAVES_OUT}
    text = bench.format_train(record)
    for word in ('tokens/s', 'forward', 'backward', 'optimizer', 'MFU', 'palm', 'kaplan', 'peak memory', 'KV cache',
                 'first pass', 'estimate', 'not comparable'):
        assert word in text


def test_fsdp_and_activation_checkpointing_bench_what_train_py_runs(capsys):
    """--parallel=fsdp (a group of one without torchrun) times the sharded model, with its estimate; Muon with
    FSDP is refused in one line, as train.py refuses it."""
    record, out, _ = run_main([*TINY, '--data=random', '--vocab_size=64', '--parallel=fsdp',
                               '--activation_checkpointing=True', '--sample_tokens=0'], capsys)
    assert record['parallel'] == 'fsdp' and record['activation_checkpointing'] is True
    assert record['tokens_per_s'] > 0 and record['phases_s']['backward'] > 0
    tiny = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=64, pos_emb='rope')
    est = record['memory_estimate']
    assert (est['parallel'], est['activation_checkpointing']) == ('fsdp', True)
    assert est['total'] == train_memory(tiny, 2, 1, 'fsdp', True, compute_dtype='float32')['total']
    assert '(fsdp, activation checkpointing)' in out
    with pytest.raises(SystemExit) as e:
        bench.main([*TINY, '--data=random', '--vocab_size=64', '--parallel=fsdp', '--optimizer=muon', '--muon_lr=0.02'])
    assert e.value.code == 1 and "optimizer='muon' with parallel='fsdp'" in capsys.readouterr().err


def test_real_shards_and_peak_override(tmp_path, capsys):
    data = tmp_path / 'tiny_bytes'
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        write_shard(str(data / f'tiny_bytes_{split}_000000.bin'), rng.integers(0, 257, 4000).astype(np.uint16))
    (data / 'meta.json').write_text(json.dumps({'tokenizer': 'bytes', 'vocab_size': 257, 'eot': 256,
                                                'source': 'test', 'complete': True}))
    record, out, _ = run_main([*TINY, f'--data_dir={data}', '--data=shards', '--peak_tflops=0.5',
                               '--sample_tokens=0', '--phases=False', f'--json={tmp_path}/r.json'], capsys)
    assert json.loads((tmp_path / 'r.json').read_text()) == json.loads(json.dumps(record)) and 'tokens/s' in out
    assert 'shards' in record['data'] and record['model']['vocab_size'] == 257
    assert record['peak_source'].startswith('given') and record['peak_tflops_per_device'] == 0.5
    fpt = record['flops_per_token']['kaplan']
    assert record['mfu']['kaplan'] == pytest.approx(fpt * record['tokens_per_s'] / 0.5e12)
    assert record['phases_s'] is None and record['sampling'] is None


def test_bad_input_is_one_error_line(tmp_path, capsys):
    for argv, words in ((['--nosuchknob=1'], 'unknown config key'),
                        ([f'--data_dir={tmp_path}', '--data=shards'], 'no train shards'),
                        (['--peak_tflops=-3'], 'peak_tflops'),
                        (['--memory', '--world_size=0'], 'world_size must be an int >= 1'),
                        (['--memory', '--dtype=fp8'], "dtype must be 'auto'"),
                        (['--peak_tflops', '1'], 'expected --key=value, got --peak_tflops')):   # no space form
        with pytest.raises(SystemExit) as e:
            bench.main(['--device=cpu', *argv])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith('error: ') and words in err and err.count('\n') == 1


def test_memory_estimate_per_gpu(capfd):
    """--memory: train_memory per GPU for DDP and FSDP, each with and without activation checkpointing, at the
    configured model and micro-batch and --world_size GPUs, in bf16 for dtype='auto' (a GPU's); no model is allocated."""
    gpt2 = os.path.join(ROOT, 'config', 'gpt2.py')
    record, out, _ = run_main([gpt2, '--memory', '--world_size=8', '--batch_size=16', '--vocab_size=50257',
                               '--json=-'], capfd)
    assert json.loads(out) == json.loads(json.dumps(record))
    assert record['bench'] == 'memory' and record['world_size'] == 8 and record['dtype'] == 'bfloat16'
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, pos_emb='learned', pad_vocab_multiple=64)
    assert record['model']['n_params'] == 124_439_808
    rows = record['estimates']
    assert [(e['parallel'], e['activation_checkpointing']) for e in rows] == [
        ('ddp', False), ('ddp', True), ('fsdp', False), ('fsdp', True)]
    for e in rows:
        est = train_memory(config, 16, 8, e['parallel'], e['activation_checkpointing'])
        assert {k: e[k] for k in est} == est
    ddp, ddp_ckpt, fsdp, fsdp_ckpt = rows
    assert fsdp['optimizer'] < ddp['optimizer'] / 7 and ddp_ckpt['activations'] < ddp['activations']
    assert fsdp_ckpt['total'] == min(e['total'] for e in rows)
    text = bench.format_memory(record)
    assert text.count(' *') == 1 and "parallel='ddp'" in text and 'NCCL' in text
    assert f"{ddp['total'] / 2 ** 30:.2f} *" in text   # the configured row (train.py's default: DDP, no checkpointing)


def test_parse_nprocs(capsys):
    # --json=- and --nprocs=1,2 through the config parser: tests/test_configurator.py
    from benchmarks.scaling import main, parse_nprocs
    assert parse_nprocs('1,2') == parse_nprocs((2, 1)) == [1, 2] and parse_nprocs(4) == [4]
    for bad in ('0,2', 'a', (1.5,), True):
        with pytest.raises(bench.ConfigError, match='nprocs must be process counts'):
            parse_nprocs(bad)
    with pytest.raises(SystemExit) as e:
        main(['--nprocs=0,2'])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith('error: nprocs must be process counts') and err.count('\n') == 1


@pytest.mark.slow
def test_scaling_with_one_and_two_processes():
    from benchmarks.scaling import format_scaling
    # four torchrun launches (1 and 2 processes, DDP and FSDP; each times strong and weak) on CPU with gloo
    proc = conftest.run_python(['-m', 'benchmarks.scaling', *TINY, '--data=random', '--vocab_size=64',
                                '--peak_tflops=1', '--nprocs=1,2', '--json=-'], one_thread=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r['bench'] == 'scaling' and r['nprocs'] == [1, 2] and r['parallel'] == ['ddp', 'fsdp']
    for parallel in ('ddp', 'fsdp'):
        strong = [row for row in r['strong'] if row['parallel'] == parallel]
        weak = [row for row in r['weak'] if row['parallel'] == parallel]
        assert [row['nprocs'] for row in strong] == [row['nprocs'] for row in weak] == [1, 2]
        # strong: the global batch (2 x 2 x 32 tokens) stays; one process takes 2 micro-steps, two take 1 each
        assert [row['tokens_per_step'] for row in strong] == [128, 128]
        assert [row['grad_accum'] for row in strong] == [2, 1]
        # weak: each process keeps its 2 x 32 tokens, so the global batch doubles
        assert [row['tokens_per_step'] for row in weak] == [64, 128]
        assert [row['grad_accum'] for row in weak] == [1, 1]
        assert [row['world_size'] for row in strong] == [1, 2] and [row['threads_per_proc'] for row in weak][1] == 1
        for rows in (strong, weak):   # each mode against its own one-process base
            assert rows[0]['speedup'] == pytest.approx(1.0) and rows[0]['efficiency'] == pytest.approx(1.0)
        t1, t2 = strong[0]['step_time_s'], strong[1]['step_time_s']
        assert strong[1]['speedup'] == pytest.approx(t1 / t2) and strong[1]['efficiency'] == pytest.approx(t1 / t2 / 2)
        t1, t2 = weak[0]['step_time_s'], weak[1]['step_time_s']
        assert weak[1]['efficiency'] == pytest.approx(t1 / t2) and weak[1]['speedup'] == pytest.approx(2 * t1 / t2)
    text = format_scaling(r)
    assert 'strong scaling' in text and 'weak scaling' in text and 'speed-up t1/tN' in text and 'fsdp' in text

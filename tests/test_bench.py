import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
from model import PRESETS, GPTConfig, flops_per_token
from prepare import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a model small enough that a whole run takes about a second on one shared core
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=2', '--warmup_steps=1',
        '--timed_steps=2', '--repeats=2', '--sample_tokens=4', '--sample_prompt=4', '--dtype=float32']


def run_main(argv, capsys):
    record = bench.main(argv)
    out = capsys.readouterr().out
    return record, out


# -----------------------------------------------------------------------------
# MFU arithmetic

def test_mfu_hand_checked_gpt2_on_a100():
    # GPT-2 124M: 124,439,808 parameters; wpe 1024*768 = 786,432; wte 50257*768 = 38,597,376.
    # PaLM: N = 124,439,808 - 786,432 = 123,653,376; 6N = 741,920,256; 12*L*H*Q*T = 12*12*12*64*1024 = 113,246,208
    # -> 855,166,464 FLOPs/token. Kaplan: N = 124,439,808 - 786,432 - 38,597,376 = 85,056,000;
    # 6N + 6*L*T*d_attn = 510,336,000 + 6*12*1024*768 = 510,336,000 + 56,623,104 = 566,959,104.
    cfg = GPTConfig(**PRESETS['gpt2'])
    assert flops_per_token(cfg, 'palm') == 855_166_464
    assert flops_per_token(cfg, 'kaplan') == 566_959_104
    # 100k tokens/s on one A100 (312 TFLOP/s dense bf16): 855,166,464e5 / 312e12 = 0.274091815...
    assert bench.mfu(855_166_464, 100_000, 312e12) == pytest.approx(0.2740918, rel=1e-6)
    # the same throughput spread over 8 GPUs is 1/8 of the utilization
    assert bench.mfu(855_166_464, 100_000, 312e12, n_devices=8) == pytest.approx(0.2740918 / 8, rel=1e-6)
    assert bench.mfu(855_166_464, 100_000, None) is None


# -----------------------------------------------------------------------------
# the peak table

@pytest.mark.parametrize('name,dtype,tf32,expected', [
    ('NVIDIA H100 80GB HBM3', torch.bfloat16, True, 989.4),     # SXM: 1979 is the 2:4-sparse figure
    ('NVIDIA H100 PCIe', torch.bfloat16, True, 756.5),
    ('NVIDIA H100 NVL', torch.float16, True, 835.5),
    ('NVIDIA H200', torch.bfloat16, True, 989.4),
    ('NVIDIA GH200 480GB', torch.bfloat16, True, 989.4),
    ('NVIDIA A100-SXM4-80GB', torch.bfloat16, True, 312.0),
    ('NVIDIA A100 80GB PCIe', torch.float32, True, 156.0),      # float32 matmuls in TF32
    ('NVIDIA A100-PCIE-40GB', torch.float32, False, 19.5),      # TF32 off: plain float32
    ('NVIDIA L40S', torch.bfloat16, True, 362.05),
    ('NVIDIA L4', torch.bfloat16, True, 121.0),
    ('NVIDIA A10G', torch.bfloat16, True, 70.0),
    ('NVIDIA A10', torch.bfloat16, True, 125.0),
    ('NVIDIA GeForce RTX 4090', torch.bfloat16, True, 165.2),
    ('NVIDIA GeForce RTX 3090', torch.bfloat16, True, 71.0),
    ('Tesla V100-SXM2-16GB', torch.float16, True, 125.0),
    ('Tesla V100-SXM2-16GB', torch.float32, True, 15.7),        # no TF32 units: float32 peak
    ('Tesla V100-SXM2-16GB', torch.bfloat16, True, None),       # no bf16 tensor cores
    ('NVIDIA B200', torch.bfloat16, True, 2250.0),
])
def test_peak_table_known_names(name, dtype, tf32, expected):
    assert bench.gpu_peak_tflops(name, dtype, tf32=tf32) == expected


def test_peak_unknown_gpu_gives_no_mfu_rather_than_a_guess(monkeypatch):
    assert bench.gpu_peak_tflops('NVIDIA GeForce GTX 1080', torch.bfloat16) is None
    assert bench.gpu_peak_tflops('Imaginary Accelerator 9000', torch.float16) is None
    # through peak_info, as bench and train.py reach it on a CUDA device (the name lookup needs no GPU)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'Imaginary Accelerator 9000')
    peak, source = bench.peak_info(torch.device('cuda'), torch.bfloat16)
    assert peak is None and 'peak_tflops' in source
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H100 80GB HBM3')
    peak, source = bench.peak_info(torch.device('cuda'), torch.bfloat16)
    assert peak == pytest.approx(989.4e12) and 'H100' in source


def test_cpu_peak_is_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, 'PEAK_CACHE', str(tmp_path / 'peaks.json'))
    monkeypatch.setattr(bench, '_measured', {})
    first = bench.peak_flops(torch.device('cpu'), torch.float32)
    assert first is not None and 1e9 < first < 1e14  # any CPU: between 1 GFLOP/s and 100 TFLOP/s
    assert bench.peak_flops('cpu', torch.float32) == first  # cached: train.py calls it once per run
    assert 'measured' in bench.peak_info('cpu', torch.float32)[1]
    # a later process on the same machine: the best ever measured wins over its own (maybe busy) measurement
    (key, best), = json.loads((tmp_path / 'peaks.json').read_text()).items()
    assert best == first and 'float32' in key and f'{torch.get_num_threads()} threads' in key
    (tmp_path / 'peaks.json').write_text(json.dumps({key: first * 10}))
    monkeypatch.setattr(bench, '_measured', {})
    assert bench.peak_flops('cpu', torch.float32) == first * 10


def test_best_peak_so_far_only_rises_and_survives_a_bad_cache(tmp_path, monkeypatch):
    path = tmp_path / 'cache' / 'peaks.json'
    monkeypatch.setattr(bench, 'PEAK_CACHE', str(path))
    assert bench._best_so_far('cpu x', 5.0) == 5.0 and json.loads(path.read_text()) == {'cpu x': 5.0}
    assert bench._best_so_far('cpu x', 3.0) == 5.0   # a measurement on a busy machine does not lower the peak
    assert bench._best_so_far('cpu x', 7.0) == 7.0 and json.loads(path.read_text()) == {'cpu x': 7.0}
    assert bench._best_so_far('cpu y', 1.0) == 1.0 and len(json.loads(path.read_text())) == 2
    path.write_text('{not json')                     # corrupt: ignored and rewritten
    assert bench._best_so_far('cpu x', 2.0) == 2.0 and json.loads(path.read_text()) == {'cpu x': 2.0}
    monkeypatch.setattr(bench, 'PEAK_CACHE', str(tmp_path / 'a-file' / 'peaks.json'))
    (tmp_path / 'a-file').write_text('')             # cannot be written: the measurement still counts
    assert bench._best_so_far('cpu x', 4.0) == 4.0


# -----------------------------------------------------------------------------
# end to end on the CPU

def test_tiny_cpu_run_produces_every_field(capsys):
    record, out = run_main([*TINY, '--data=random', '--vocab_size=64', '--json'], capsys)
    assert json.loads(out) == json.loads(json.dumps(record))  # stdout is exactly one JSON object
    for key, value in record.items():
        assert value is not None, key
    st = record['step_time_s']
    assert len(st['repeats']) == 2 and st['min'] <= st['median'] <= st['max']
    assert record['tokens_per_step'] == 2 * 32
    assert record['tokens_per_s'] == pytest.approx(64 / st['median'])
    assert set(record['phases_s']) == {'data', 'forward', 'backward', 'optimizer', 'sum'}
    assert all(v >= 0 for v in record['phases_s'].values()) and record['phases_s']['forward'] > 0
    assert set(record['mfu']) == set(record['flops_per_token']) == {'palm', 'kaplan'}
    fpt = record['flops_per_token']['palm']
    assert record['tflops_per_device']['palm'] == pytest.approx(fpt * record['tokens_per_s'] / 1e12)
    peak = record['peak_tflops_per_device'] * 1e12
    assert record['mfu']['palm'] == pytest.approx(fpt * record['tokens_per_s'] / peak)
    assert record['flops_per_token']['palm'] > record['flops_per_token']['kaplan']  # PaLM counts the lm_head
    assert record['peak_source'].startswith('measured') and record['peak_memory_bytes'] > 10 * 2 ** 20
    s = record['sampling']
    assert s['new_tokens'] == 4 and s['kv_cache_tok_s'] > 0 and s['no_cache_tok_s'] > 0
    text = bench.format_train(record)
    for word in ('tokens/s', 'forward', 'backward', 'optimizer', 'MFU', 'palm', 'kaplan', 'peak memory', 'KV cache'):
        assert word in text


def test_real_shards_and_peak_override(tmp_path, capsys):
    data = tmp_path / 'tiny_bytes'
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        write_shard(str(data / f'tiny_bytes_{split}_000000.bin'), rng.integers(0, 257, 4000).astype(np.uint16))
    (data / 'meta.json').write_text(json.dumps({'tokenizer': 'bytes', 'vocab_size': 257, 'eot': 256,
                                                'source': 'test', 'complete': True}))
    record, _ = run_main([*TINY, f'--data_dir={data}', '--data=shards', '--peak_tflops=0.5',
                          '--sample_tokens=0', '--phases=False', '--json'], capsys)
    assert 'shards' in record['data'] and record['model']['vocab_size'] == 257
    assert record['peak_source'].startswith('given') and record['peak_tflops_per_device'] == 0.5
    fpt = record['flops_per_token']['kaplan']
    assert record['mfu']['kaplan'] == pytest.approx(fpt * record['tokens_per_s'] / 0.5e12)
    assert record['phases_s'] is None and record['sampling'] is None


def test_bad_input_is_one_error_line(tmp_path, capsys):
    for argv, words in ((['--nosuchknob=1'], 'unknown config key'),
                        ([f'--data_dir={tmp_path}', '--data=shards'], 'no train shards'),
                        (['--peak_tflops=-3'], 'peak_tflops'),
                        (['--nprocs=0,2'], 'nprocs')):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith('error: ') and words in err and err.count('\n') == 1


def test_argv_accepts_flag_forms():
    assert bench.normalize_argv(['c.py', '--json', '--nprocs', '1,2', '--steps=3']) == \
        ['c.py', '--json=True', '--nprocs=1,2', '--steps=3']
    assert bench.parse_nprocs('1,2') == bench.parse_nprocs((2, 1)) == [1, 2] and bench.parse_nprocs(4) == [4]


@pytest.mark.slow
def test_scaling_with_one_and_two_processes():
    # four torchrun launches (strong and weak, 1 and 2 processes) on CPU with gloo
    cmd = [sys.executable, os.path.join(ROOT, 'bench.py'), *TINY, '--data=random', '--vocab_size=64',
           '--peak_tflops=1', '--nprocs', '1,2', '--json']
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r['bench'] == 'scaling' and r['nprocs'] == [1, 2]
    strong, weak = r['strong'], r['weak']
    assert [row['nprocs'] for row in strong] == [row['nprocs'] for row in weak] == [1, 2]
    # strong: the global batch (2 x 2 x 32 tokens) stays; one process takes 2 micro-steps, two take 1 each
    assert [row['tokens_per_step'] for row in strong] == [128, 128]
    assert [row['grad_accum'] for row in strong] == [2, 1]
    # weak: each process keeps its 2 x 32 tokens, so the global batch doubles
    assert [row['tokens_per_step'] for row in weak] == [64, 128]
    assert [row['grad_accum'] for row in weak] == [1, 1]
    assert [row['world_size'] for row in strong] == [1, 2] and [row['threads_per_proc'] for row in weak][1] == 1
    for rows in (strong, weak):
        assert rows[0]['speedup'] == pytest.approx(1.0) and rows[0]['efficiency'] == pytest.approx(1.0)
    t1, t2 = strong[0]['step_time_s'], strong[1]['step_time_s']
    assert strong[1]['speedup'] == pytest.approx(t1 / t2) and strong[1]['efficiency'] == pytest.approx(t1 / t2 / 2)
    t1, t2 = weak[0]['step_time_s'], weak[1]['step_time_s']
    assert weak[1]['efficiency'] == pytest.approx(t1 / t2) and weak[1]['speedup'] == pytest.approx(2 * t1 / t2)
    text = bench.format_scaling(r)
    assert 'strong scaling' in text and 'weak scaling' in text and 'speed-up t1/tN' in text

"""Tests for configurator.py, the one config parser of train.py, sample.py and bench.py: config files, --key=value
overrides, types, bare --flag for on/off knobs, and one-line errors. The knobs are train.py's (its DEFAULTS)."""
import os

import pytest

import bench
import sample
import train
from pretrain.configurator import ConfigError, check_type, knobs, parse_config, parse_value, read_config_file, script_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_config_file_then_overrides(tmp_path):
    conf = tmp_path / 'c.py'
    conf.write_text("n_layer = 6\nlearning_rate = 1e-3\nout_dir = 'x'\n")
    cfg = parse_config([str(conf), '--n_layer=8', '--device=cuda', "--out_dir='y'", '--min_lr=0',
                        '--n_kv_head=2', '--compile=True'], train.DEFAULTS)
    assert cfg['n_layer'] == 8 and cfg['learning_rate'] == 1e-3 and cfg['out_dir'] == 'y'
    assert cfg['device'] == 'cuda' and cfg['min_lr'] == 0.0 and isinstance(cfg['min_lr'], float)
    assert cfg['n_kv_head'] == 2 and cfg['compile'] is True
    assert cfg['batch_size'] == train.DEFAULTS['batch_size']


def test_train_imports_the_one_parser():
    assert train.parse_config is parse_config and train.ConfigError is ConfigError


@pytest.mark.parametrize('argv, message', [
    (['--n_layr=3'], "unknown config key 'n_layr'"),
    (['--n_layer=3.5'], 'n_layer must be int'),
    (['--compile=1'], 'compile must be bool'),
    (['--learning_rate=fast'], 'learning_rate must be float'),
    (['n_layer=3'], 'does not exist'),
    (['--n_layer'], 'expected --key=value'),
])
def test_parse_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_config(argv, train.DEFAULTS)
    assert '\n' not in str(e.value)


def test_unknown_key_names_close_matches():
    with pytest.raises(ConfigError, match='did you mean.*learning_rate'):
        parse_config(['--learning_rat=1e-3'], train.DEFAULTS)


def test_bare_flag_means_true_for_bools_only():
    cfg = parse_config(['--compile', '--qk_norm'], train.DEFAULTS)
    assert cfg['compile'] is True and cfg['qk_norm'] is True
    assert parse_config(['--compile', '--compile=False'], train.DEFAULTS)['compile'] is False   # the last one wins
    # a knob whose default is None or a number still needs its value
    for arg in ('--n_kv_head', '--max_iters', '--device'):
        with pytest.raises(ConfigError, match=f'expected --key=value, got {arg}$'):
            parse_config([arg], train.DEFAULTS)


def test_bench_json_and_tuples():
    """bench.py's --json takes a file or '-' (stdout), as every script's: a bare --json is refused; a None-default
    knob takes a tuple (64,128)."""
    cfg = parse_config(['--json=-', '--scaling_totals=64,128', '--timed_steps=3'], bench.DEFAULTS)
    assert cfg['json'] == '-' and cfg['scaling_totals'] == (64, 128) and cfg['timed_steps'] == 3
    assert parse_config(['--json=out/r.json'], bench.DEFAULTS)['json'] == 'out/r.json'
    with pytest.raises(ConfigError, match='expected --key=value, got --json'):
        parse_config(['--json'], bench.DEFAULTS)
    # `--timed_steps 3` (a space) is not supported: no bool, so its value must follow '='
    with pytest.raises(ConfigError, match='expected --key=value, got --timed_steps'):
        parse_config(['--timed_steps', '3'], bench.DEFAULTS)


def test_parse_value():
    assert parse_value('3') == 3 and parse_value('1e-3') == 1e-3 and parse_value('None') is None
    assert parse_value('True') is True and parse_value("'cuda'") == 'cuda' and parse_value('(1, 2)') == (1, 2)
    assert parse_value('cuda') == 'cuda' and parse_value('cuda:1') == 'cuda:1'   # a bare word stays a string
    assert parse_value('data/x y') == 'data/x y' and parse_value('') == ''


def test_check_type():
    d = {'lr': 1.0, 'n': 2, 'flag': False, 'maybe': None, 'name': 'x'}
    assert check_type('lr', 3, d, 'here') == 3.0 and isinstance(check_type('lr', 3, d, 'here'), float)
    assert check_type('maybe', 5, d, 'here') == 5 and check_type('n', None, d, 'here', nullable=('n',)) is None
    assert check_type('maybe', (1, 2), d, 'here') == (1, 2)   # bench.py's --nprocs=1,2, --scaling_totals=(64, 128)
    for key, value, words in (('n', True, 'n must be int'), ('flag', 1, 'flag must be bool'),
                              ('name', 3, 'name must be str'), ('maybe', [1], 'maybe must be a number'),
                              ('maybe', ([1],), 'maybe must be a number'), ('n', None, 'n must be int, got None'),
                              ('nope', 1, "unknown config key 'nope' in here")):
        with pytest.raises(ConfigError, match=words):
            check_type(key, value, d, 'here')


def test_script_defaults_equal_the_scripts_own_knobs():
    """bench.py reads train.py's knobs with ast (scripts never import each other): every key and value must be
    exactly what train.py itself has, types included (1 vs 1.0 vs True)."""
    got = script_defaults(os.path.join(ROOT, 'train.py'))
    assert set(got) == set(train.DEFAULTS)
    for key, value in train.DEFAULTS.items():
        assert got[key] == value and type(got[key]) is type(value), key
    got = script_defaults(os.path.join(ROOT, 'sample.py'))
    assert got == sample.DEFAULTS and all(type(got[k]) is type(v) for k, v in sample.DEFAULTS.items())
    assert bench.DEFAULTS == {**train.DEFAULTS, **script_defaults(os.path.join(ROOT, 'bench.py'))}
    with pytest.raises(ConfigError, match='cannot read the defaults of'):
        script_defaults(os.path.join(ROOT, 'no_such_script.py'))


def test_knobs_keep_only_public_literals():
    ns = {'a': 1, 'b': 'x', 'c': None, 'd': 2.5, 'e': True, '_private': 1, 'CONSTANT': 3, 'f': [1], 'g': len,
          'h': os}
    assert knobs(ns) == {'a': 1, 'b': 'x', 'c': None, 'd': 2.5, 'e': True}


def test_config_file_with_a_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    conf = tmp_path / 'broken.py'
    conf.write_text("n_layer = 6\nlearning_rate = = 1e-3\nout_dir = 'x'\n")
    with pytest.raises(ConfigError) as e:
        parse_config([str(conf)], train.DEFAULTS)
    msg = str(e.value)
    assert '\n' not in msg and str(conf) in msg and '(line 2)' in msg and 'SyntaxError' in msg, msg


def test_config_file_errors_are_one_line(tmp_path):
    conf = tmp_path / 'c.py'
    conf.write_text("n_layer = undefined_name + 1\n")
    with pytest.raises(ConfigError, match="NameError") as e:
        read_config_file(str(conf))
    assert str(conf) in str(e.value) and '\n' not in str(e.value)
    conf.write_text("import math\n_scratch = 3\nn_layer = 2 * 3\ndef f():\n    pass\n")   # modules, _names, functions
    assert read_config_file(str(conf)) == {'n_layer': 6}
    conf.write_text("n_layers = 3\n")   # a typo in a config file names the file
    with pytest.raises(ConfigError, match=f"unknown config key 'n_layers' in {conf}; did you mean n_layer"):
        parse_config([str(conf)], train.DEFAULTS)
    with pytest.raises(ConfigError, match='config file .*nope.py does not exist'):
        read_config_file(str(tmp_path / 'nope.py'))


def test_help_prints_the_doc_and_every_knob(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(['--help'], {'a': 1, 'b': 'x'}, doc='The script.\n')
    assert e.value.code == 0
    assert capsys.readouterr().out == "The script.\n\nknobs and their defaults:\n  --a=1\n  --b='x'\n"


@pytest.mark.parametrize('argv', [['--batch_size=None'], ['--learning_rate=None'], ['--device=None'],
                                  ['--compile=None']])
def test_none_only_where_the_default_is_none(argv, tmp_path):
    """issue 23: --batch_size=None was accepted here and became a TypeError deep in train.py."""
    with pytest.raises(ConfigError, match=f"{argv[0][2:].split('=')[0]} must be") as e:
        parse_config(argv, train.DEFAULTS)
    assert '\n' not in str(e.value)
    conf = tmp_path / 'c.py'
    conf.write_text(f"{argv[0][2:]}\n")   # a config file too
    with pytest.raises(ConfigError, match='must be'):
        parse_config([str(conf)], train.DEFAULTS)
    assert parse_config(['--n_kv_head=None', '--muon_lr=None'], train.DEFAULTS)['n_kv_head'] is None


def test_a_script_names_the_knobs_that_also_take_none():
    """sample.py's top_k (None or 0 = all) and bench.py's grad_accum (None = from total_batch_size) take None
    although their defaults are numbers: the script says so, nothing else does."""
    assert parse_config(['--top_k=None'], sample.DEFAULTS, nullable=sample.NULLABLE)['top_k'] is None
    assert parse_config(['--grad_accum=None'], bench.DEFAULTS, nullable=bench.NULLABLE)['grad_accum'] is None
    with pytest.raises(ConfigError, match='top_k must be int'):
        parse_config(['--top_k=None'], sample.DEFAULTS)

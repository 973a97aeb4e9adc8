"""
The one config parser of the scripts with knobs (train, sample, eval, export, and bench on top of train's): a script's
knobs are the plain assignments at the top of its file (nanoGPT's style); a config file (plain Python, executed as nanoGPT does: the user's own code) and then
--key=value overrides (ast.literal_eval, never eval) change them. Every key must be a known knob and every value
have the default's type; any mistake is a ConfigError, one line naming the key.

    python train.py config/gpt2.py --batch_size=32 --device=cuda
"""
import ast
import builtins
import difflib
import os
import sys


class ConfigError(Exception):
    """A user-facing configuration mistake: the message is one line."""


KNOB_TYPES = (int, float, str, bool, type(None))


def knobs(namespace):
    """A script's defaults: the int/float/str/bool/None globals of its module namespace, not _private or CONSTANT."""
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and k != k.upper() and isinstance(v, KNOB_TYPES)}


def script_defaults(path):
    """The knobs of another script without importing it (scripts never import each other): its top-level
    `name = literal` assignments, read with ast. Used to count the model that `train.py` builds by default."""
    try:
        tree = ast.parse(open(path).read(), path)
    except (OSError, SyntaxError) as e:
        raise ConfigError(f"cannot read the defaults of {path} ({type(e).__name__}: {e})") from None
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return knobs(out)


def parse_value(text):
    """--key=value's value: a Python literal, or the text itself (--device=cuda rather than --device="'cuda'")."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def read_config_file(path):
    """The assignments of a config file (plain Python) -> dict; modules, functions and _private names are left out."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    namespace = {}
    try:
        with open(path) as f:
            source = f.read()
        exec(builtins.compile(source, path, 'exec'), {}, namespace)
    except Exception as e:   # a syntax error, a NameError ...: the user's file, one line
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise ConfigError(f"config file {path}{where}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not callable(v) and not isinstance(v, type(sys))}


def check_type(key, value, defaults, where, nullable=()):
    """value for knob `key`, converted int -> float where the default is a float; ConfigError otherwise. None is
    a value only where the default is None or the knob is in nullable."""
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {where}{hint}")
    default = defaults[key]
    if value is None and default is not None and key not in nullable:
        raise ConfigError(f"{key} must be {type(default).__name__}, got None in {where} (None is not among its values)")
    if default is None or value is None:
        # a tuple of such values too: bench.py's --nprocs=1,2 and --scaling_totals=(64, 128)
        if not (isinstance(value, KNOB_TYPES) or isinstance(value, tuple) and all(isinstance(v, KNOB_TYPES)
                                                                                    for v in value)):
            raise ConfigError(f"{key} must be a number, a string, a bool, None or a tuple of those, got {value!r} "
                              f"in {where}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int subclass: keep them apart
    if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default)):
        raise ConfigError(f"{key} must be {type(default).__name__}, got {value!r} in {where}")
    return value


def parse_config(argv, defaults, doc=None, nullable=()):
    """[config.py ...] [--key=value ...] -> dict of every knob. --help prints doc and the knobs, then exits 0.
    nullable: knobs with a non-None default that also take None (sample.py's top_k: None = all)."""
    cfg = dict(defaults)
    if '-h' in argv or '--help' in argv:
        text = doc if doc is not None else (sys.modules['__main__'].__doc__ or '')
        print(text.strip() + '\n\nknobs and their defaults:')
        print('\n'.join(f'  --{k}={v!r}' for k, v in defaults.items()))
        sys.exit(0)
    for arg in argv:
        if not arg.startswith('--'):
            for k, v in read_config_file(arg).items():
                cfg[k] = check_type(k, v, defaults, arg, nullable)
        else:
            key, eq, text = arg[2:].partition('=')
            if not eq and isinstance(defaults.get(key), bool):
                eq, text = '=', 'True'   # --compile means --compile=True for an on/off knob
            if not eq:
                raise ConfigError(f"expected --key=value, got {arg}")
            cfg[key] = check_type(key, parse_value(text), defaults, arg, nullable)
    return cfg


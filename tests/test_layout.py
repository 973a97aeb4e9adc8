"""The layout DESIGN.md draws, checked against the code: every module listed with exactly the project modules it
imports, scripts that never import each other, a library that never imports a script, no import cycle, and no
sys.path edits anywhere."""
import ast
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {'prepare.py', 'train.py', 'sample.py', 'eval.py', 'bench.py', 'scaling.py', 'export.py'}


def tracked_py():
    out = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()
    return [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) for f in fs
            if f.endswith('.py') and '.git' not in d]


def project_modules():
    """{'train.py': 'train', 'pretrain/data.py': 'pretrain.data', ...}: the root's files and the library's."""
    files = [f for f in tracked_py() if os.path.exists(os.path.join(ROOT, f))
             and (os.sep not in f or f.startswith('pretrain' + os.sep)) and not f.endswith('__init__.py')]
    return {f: f[:-3].replace(os.sep, '.') for f in files}


def imports_of(path, names):
    """The project modules `path` imports (top level or inside functions)."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module in names:
                deps.add(node.module)
            elif node.module in ('pretrain', 'pretrain.scaling'):
                deps |= {f'{node.module}.{a.name}' for a in node.names if f'{node.module}.{a.name}' in names}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name in names}
    return deps


def design_tables():
    """DESIGN.md's rows `| \\`path\\` | ... | imports |` -> {path: set of module paths it imports}."""
    rows = {}
    for line in open(os.path.join(ROOT, 'DESIGN.md')):
        m = re.match(r'\|\s*`([\w/]+\.py)`\s*\|[^|]*\|\s*([^|]*)\|\s*$', line)
        if m:
            rows[m.group(1)] = {x.strip().strip('`') for x in m.group(2).split(',') if x.strip() not in ('', '-')}
    return rows


def test_design_lists_every_module_with_exactly_its_imports():
    mods = project_modules()
    names = set(mods.values())
    path_of = {v: k for k, v in mods.items()}
    rows = design_tables()
    assert set(rows) == set(mods), f"DESIGN.md lists {sorted(set(rows) - set(mods))} that do not exist and misses " \
                                   f"{sorted(set(mods) - set(rows))}"
    for f, listed in rows.items():
        actual = {path_of[d] for d in imports_of(f, names)}
        assert listed == actual, f"DESIGN.md says {f} imports {sorted(listed)}; the code imports {sorted(actual)}"


def test_scripts_import_the_library_never_each_other_and_no_cycle():
    mods = project_modules()
    names = set(mods.values())
    graph = {m: imports_of(f, names) for f, m in mods.items()}
    scripts = {mods[f] for f in mods if f in SCRIPTS}
    for m, deps in graph.items():
        assert not deps & scripts, f"{m} imports the script(s) {sorted(deps & scripts)}"
    state = {}

    def visit(m, stack):
        state[m] = 'open'
        for d in graph[m]:
            assert state.get(d) != 'open', f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = 'done'
    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_sys_path_edits():
    bad = [f for f in tracked_py() if re.search(r'sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=',
                                                open(os.path.join(ROOT, f)).read())]
    assert not bad, f"sys.path edited in {bad}: run scripts from the root, or as python -m"

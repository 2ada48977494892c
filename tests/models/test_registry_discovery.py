"""The registry finds its models itself: builtins on the first lookup, third-party ones through entry points.

Each check runs in a fresh interpreter, where nothing has looked a model up yet.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTINS = ["cnn1", "cnn2", "cnn3", "ad_cnn64", "fmnist_cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def run_python(code: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    extra = [str(REPO_ROOT / "src")] + ([str(path)] if path else [])
    env["PYTHONPATH"] = os.pathsep.join(extra + [env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300)


def install_plugin(root: Path, module: str, source: str) -> Path:
    """A distribution on ``root`` whose entry point in the group vitrina.models names ``module``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vitrina.models]\n{module} = {module}\n")
    return root


PLUGIN = """
    from torch import nn
    from vitrina.models.network import Backbone
    from vitrina.models.registry import register_model
    from vitrina.preprocess import Preprocess

    @register_model("plugin_cnn", family="scratch", description="from a plugin", default_mode="scratch",
                    preprocess=Preprocess(input_size=24, mean=(0.5,), std=(0.5,), channels=1, resize="squash",
                                          crop_pct=1.0, interpolation="bilinear"))
    def build(*, channels, input_size, pretrained):
        conv = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return Backbone(conv, 4, [["0"]])
"""


def test_builtins_load_on_first_lookup_and_plugins_after_them(tmp_path: Path) -> None:
    path = install_plugin(tmp_path, "vitrina_toy_plugin", PLUGIN)
    result = run_python(f"""
        import sys
        import vitrina.models
        assert "torch" not in sys.modules, "importing the package loads no torch"
        from vitrina.models import registry
        assert not any(m in sys.modules for m in registry.BUILTIN_MODULES + ("vitrina_toy_plugin",)), "nothing registers on import"
        assert "vitrina.models.timm_models" not in sys.modules
        names = [spec.name for spec in vitrina.models.list_models()]
        assert names == {BUILTINS!r} + ["plugin_cnn"], names
        assert vitrina.models.create_model("plugin_cnn", 2).num_features == 4
        assert registry.get_spec("timm:resnet18").family == "timm"
        print("ok")
    """, path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_a_builtin_module_first_keeps_the_builtin_order() -> None:
    result = run_python(f"""
        import vitrina.models.scratch  # its first registration imports the other builtins before its own
        from vitrina.models import list_models
        names = [spec.name for spec in list_models()]
        assert names == {BUILTINS!r}, names
        print("ok")
    """)
    assert result.returncode == 0, result.stderr


def test_a_plugin_that_clashes_or_breaks_is_named_in_a_model_error(tmp_path: Path) -> None:
    clash = PLUGIN.replace('"plugin_cnn"', '"cnn2"')
    broken = "raise ImportError('no such thing')"
    for i, (source, expected) in enumerate([(clash, "'cnn2' is already registered"), (broken, "failed to import: ImportError: no such thing")]):
        root = tmp_path / str(i)
        path = install_plugin(root, "vitrina_bad_plugin", source)
        result = run_python("""
            from vitrina.errors import ModelError
            from vitrina.models import get_spec
            for _ in range(2):  # every lookup says so, not only the first
                try:
                    get_spec("cnn1")
                except ModelError as exc:
                    print(exc)
        """, path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 2 and lines[0] == lines[1], result.stdout
        assert "model plugin 'vitrina_bad_plugin' (vitrina_bad_plugin)" in lines[0] and expected in lines[0], lines[0]

"""Kiosk settings: every key has a default; a bad file is refused naming the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device.core.settings import ConfigError, KioskConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_no_file_means_all_defaults():
    config = load_config(None)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.media.import_folders == [Path("/media"), Path("/run/media")]
    assert config.models.bundles_dir.name == "bundles" and config.models.bundles == []
    assert config.store.data_dir.name == "bedside"


def test_file_sets_only_what_differs(tmp_path):
    path = tmp_path / "bedside.toml"
    path.write_text('[server]\nport = 9000\n[store]\ndata_dir = "/srv/bedside"\n[ui]\noperator = "ward 3"\n')
    config = load_config(path)
    assert config.server.port == 9000 and config.server.host == "127.0.0.1"
    assert config.store.data_dir == Path("/srv/bedside") and config.ui.operator == "ward 3"
    assert config.with_overrides(**{"server.port": 0, "server.host": None}).server.port == 0


def test_tensorrt_settings_come_from_the_file_and_the_environment_overrides_them(tmp_path):
    path = tmp_path / "bedside.toml"
    path.write_text(f'[models.tensorrt]\ncache_dir = "{tmp_path}/engines"\nmax_batch = 8\ndla_core = 0\n')
    trt = load_config(path).models.tensorrt
    assert (trt.cache_dir, trt.max_batch, trt.opt_batch, trt.dla_core) == (tmp_path / "engines", 8, 1, 0)
    assert load_config(path).models.backend_settings("tensorrt") == trt
    overridden = trt.with_env({"BEDSIDE_TRT_MAX_BATCH": "4", "BEDSIDE_ENGINE_CACHE": str(tmp_path / "elsewhere")})
    assert (overridden.cache_dir, overridden.max_batch, overridden.dla_core) == (tmp_path / "elsewhere", 4, 0)
    assert trt.with_env({}) is trt


@pytest.mark.parametrize(
    "text, key",
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[models.tensorrt]\nmax_batch = 0\n", "models.tensorrt.max_batch"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[models]\nprecision = 'int4'\n", "models.precision"),
        ("[cameras]\nx = 1\n", "cameras"),
    ],
)
def test_bad_setting_names_the_key_and_the_file(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and key in str(err.value)


def test_not_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_serve_refuses_a_bad_config_with_a_clear_message(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nthreads = 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "device.cli", "serve", "--config", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert out.returncode == 2
    assert f"bedside: {path}: invalid setting: server.threads" in out.stderr
    assert "Traceback" not in out.stderr


def test_defaults_validate_strictly():
    with pytest.raises(Exception):
        KioskConfig.model_validate({"server": {"host": "x", "unknown": 1}})


def test_the_shipped_appliance_config_and_unit_agree_with_the_code():
    import re
    import shlex
    from pathlib import Path

    from device.cli import build_parser
    from device.core.settings import load_config

    root = Path(__file__).resolve().parent.parent
    load_config(root / "systemd" / "bedside.toml")  # the file the unit names must validate
    unit = (root / "systemd" / "bedside.service").read_text()
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1)
    args = shlex.split(exec_start)[1:]
    assert args[0] == "serve"
    build_parser("serve").parse_args(args)  # every flag the unit passes exists

"""The configuration file: validated at start-up, with errors that name the key or the file.

Also the command line's handling of a bad file or date, which must fail before any Spark.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from lookalike.cli import main
from lookalike.config import Config, ConfigError, load_config
from lookalike.core.storage import Location

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "conf" / "default.yaml"
SECTIONS = [name for name in Config.model_fields if name != "base_dir"]


def write_conf(folder: Path, text: str, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- conf/default.yaml documents the defaults --------------------------------------------


def test_default_yaml_loads():
    config = load_config(DEFAULT_YAML)
    assert Path(config.base_dir) == DEFAULT_YAML.parent.resolve()


def test_default_yaml_names_every_section():
    assert set(yaml.safe_load(DEFAULT_YAML.read_text())) == set(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
def test_default_yaml_equals_the_code_defaults(section):
    from_file = getattr(load_config(DEFAULT_YAML), section).model_dump()
    assert from_file == getattr(Config(), section).model_dump()


def test_default_yaml_sets_every_key_of_every_section():
    # The file documents every setting: a key added to the code must be added to the file.
    data = yaml.safe_load(DEFAULT_YAML.read_text())
    for section in SECTIONS:
        assert set(data[section]) == set(type(getattr(Config(), section)).model_fields), section


def test_empty_file_gives_the_defaults(tmp_path):
    config = load_config(write_conf(tmp_path, ""))
    for section in SECTIONS:
        assert getattr(config, section) == getattr(Config(), section)


# --- errors name the key -----------------------------------------------------------------


def test_unknown_key_names_it(tmp_path):
    path = write_conf(tmp_path, "model:\n  batch_sze: 64\n")
    with pytest.raises(ConfigError, match=r"model\.batch_sze") as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)


def test_unknown_section_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"modle"):
        load_config(write_conf(tmp_path, "modle:\n  batch_size: 64\n"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("model:\n  batch_size: 0\n", "model.batch_size"),
        ("model:\n  batch_size: lots\n", "model.batch_size"),
        ("model:\n  device: tpu\n", "model.device"),
        ("model:\n  image_size: 16\n", "model.image_size"),
        ("duplicates:\n  min_similarity: 1.5\n", "duplicates.min_similarity"),
        ("neighbors:\n  k: 0\n", "neighbors.k"),
        ("index:\n  search_k: -2\n", "index.search_k"),
        ("catalog:\n  format: xlsx\n", "catalog.format"),
    ],
)
def test_bad_value_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_conf(tmp_path, text))
    assert f"{key}:" in str(excinfo.value)


def test_several_bad_keys_are_all_named(tmp_path):
    text = "model:\n  batch_size: 0\n  device: tpu\n"
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_conf(tmp_path, text))
    assert "model.batch_size" in str(excinfo.value)
    assert "model.device" in str(excinfo.value)


def test_missing_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(missing)
    assert str(missing) in str(excinfo.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write_conf(tmp_path, "model:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)
    assert "YAML" in str(excinfo.value)


def test_top_level_list_is_refused(tmp_path):
    path = write_conf(tmp_path, "- model\n- spark\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(path) in str(excinfo.value)


def test_base_dir_in_the_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="base_dir"):
        load_config(write_conf(tmp_path, "base_dir: /elsewhere\n"))


# --- paths -------------------------------------------------------------------------------


def test_relative_output_root_resolves_against_the_files_folder(tmp_path, monkeypatch):
    conf_dir = tmp_path / "deploy" / "conf"
    conf_dir.mkdir(parents=True)
    path = write_conf(conf_dir, "output:\n  root: ../var\n")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    # Loaded through a relative path from another cwd: still the file's folder that counts.
    config = load_config(Path("../../deploy/conf/job.yaml"))
    assert config.output_root == Location.of((tmp_path / "deploy" / "var").resolve())
    assert load_config(path).output_root == config.output_root


def test_an_output_root_uri_is_taken_as_it_is(tmp_path):
    config = load_config(write_conf(tmp_path, "output:\n  root: s3a://shop-lake/lookalike/\n"))
    assert str(config.output_root) == "s3a://shop-lake/lookalike"
    assert not config.output_root.is_local


def test_absolute_output_root_and_uris_are_kept(tmp_path):
    absolute = tmp_path / "out"
    config = load_config(write_conf(tmp_path, f"output:\n  root: {absolute}\n"))
    assert config.output_root == Location.of(absolute)
    assert config.resolve("s3://bucket/lookalike") == "s3://bucket/lookalike"


# --- spark.conf --------------------------------------------------------------------------


def test_spark_conf_values_become_strings(tmp_path):
    text = (
        "spark:\n  conf:\n"
        "    spark.sql.adaptive.enabled: true\n"
        "    spark.sql.shuffle.partitions: 8\n"
        "    spark.speculation: false\n"
        "    spark.memory.fraction: 0.6\n"
        "    spark.driver.memory: 2g\n"
    )
    conf = load_config(write_conf(tmp_path, text)).spark.conf
    assert conf == {
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.shuffle.partitions": "8",
        "spark.speculation": "false",
        "spark.memory.fraction": "0.6",
        "spark.driver.memory": "2g",
    }


# --- with_overrides ----------------------------------------------------------------------


def test_with_overrides_replaces_only_the_named_settings():
    base = Config()
    config = base.with_overrides(model={"batch_size": 8}, neighbors={"k": 3})
    assert config.model.batch_size == 8
    assert config.neighbors.k == 3
    assert config.model.image_size == base.model.image_size
    assert base.model.batch_size == 32  # the original is unchanged


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model": {"batch_size": 0}}, "model.batch_size"),
        ({"model": {"batch_sze": 8}}, "model.batch_sze"),
        ({"model": {"device": "tpu"}}, "model.device"),
    ],
)
def test_with_overrides_validates_like_the_file(overrides, key):
    with pytest.raises(ConfigError) as excinfo:
        Config().with_overrides(**overrides)
    assert key in str(excinfo.value)


def test_with_overrides_keeps_the_files_folder(tmp_path):
    config = load_config(write_conf(tmp_path, "output:\n  root: out\n"))
    overridden = config.with_overrides(model={"batch_size": 8})
    assert overridden.output_root == Location.of((tmp_path / "out").resolve())


# --- the command line --------------------------------------------------------------------


def test_cli_bad_config_exits_2_naming_the_key_without_spark(tmp_path, capsys, monkeypatch):
    import lookalike.session

    def no_spark(config):
        raise AssertionError("a Spark session was started for a bad configuration")

    # A tripwire, not a stand-in: the CLI must return before it would ever get here.
    monkeypatch.setattr(lookalike.session, "build_session", no_spark)
    bad = write_conf(tmp_path, "model:\n  batch_sze: 64\n")
    started = time.perf_counter()
    code = main(["nightly", "--conf", str(bad), "--run-date", "2026-11-23"])
    elapsed = time.perf_counter() - started
    assert code == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert "model.batch_sze" in err
    assert elapsed < 0.5


def test_cli_missing_config_exits_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["embed", "--conf", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_cli_invalid_run_date_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["nightly", "--conf", str(DEFAULT_YAML), "--run-date", "2026-13-45"])
    assert excinfo.value.code == 2
    assert "2026-13-45" in capsys.readouterr().err


def test_cluster_example_is_a_valid_configuration():
    config = load_config(REPO / "conf" / "cluster.example.yaml")
    assert config.spark.conf["spark.task.resource.gpu.amount"] == "0.25"
    assert config.model.device == "auto"
    assert config.catalog.image_roots == ["s3://<bucket>/product-images"]


def test_the_aligned_band_must_start_below_the_duplicate_threshold(tmp_path):
    """The grey band of thumbnail-checked pairs lies below min_similarity; a band at or
    above it is an error that names both settings, and null turns the band off."""
    text = "duplicates:\n  min_similarity: 0.95\n  aligned_min_similarity: 0.96\n"
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_conf(tmp_path, text))
    message = str(excinfo.value)
    assert "duplicates" in message and "aligned_min_similarity (0.96)" in message
    assert "min_similarity (0.95)" in message
    off = load_config(write_conf(tmp_path, "duplicates:\n  aligned_min_similarity: null\n"))
    assert off.duplicates.aligned_min_similarity is None

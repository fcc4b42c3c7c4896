"""The console script: help text, usage line, `recipes` command, `recipe:NAME` configs, quiet output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "lightning_autoopt", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_callback_help_shows_autodrop_arguments_with_docstrings():
    proc = _run("fit", "--trainer.callbacks.help", "lightning_autoopt.callbacks.AutoDrop")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("usage: autoopt "), out[:200]
    for arg in ("drop_factor", "patience", "interval", "min_lr", "theta"):
        # jsonargparse 4.53 prints `--trainer.callbacks.ARG`, 4.30 (our lowest) `--trainer.callbacks.init_args.ARG`
        flags = (f"--trainer.callbacks.{arg} ", f"--trainer.callbacks.init_args.{arg} ")
        assert any(flag in out for flag in flags), f"{arg} missing from help:\n{out}"
    # the docstring's Args: text reaches the help (not just the bare names)
    assert "(type: float" in out and "default:" in out
    assert "Set ``trainer.should_stop``" in out


def test_version_and_top_level_import():
    import lightning_autoopt

    assert lightning_autoopt.__version__


@pytest.mark.parametrize("name", ["lsgd", "lsgd_spawn", "easgd", "localsgd"])
def test_strategy_names_registered_on_import(name: str):
    from lightning.pytorch.strategies import StrategyRegistry

    import lightning_autoopt  # noqa: F401

    assert name in StrategyRegistry.available_strategies()


def test_module_usage_line_says_autoopt():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: autoopt "), proc.stdout[:300]
    assert "__main__" not in proc.stdout
    assert "autoopt recipes" in proc.stdout  # the epilog points at the recipes


def test_fit_usage_line_says_autoopt():
    proc = _run("fit", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: autoopt [options] fit"), proc.stdout[:300]


def test_recipes_command_lists_every_recipe_with_its_description(capsys: pytest.CaptureFixture[str]):
    from lightning_autoopt.cli import main
    from lightning_autoopt.recipes import list_recipes, recipe_description

    main(["recipes"])
    out = capsys.readouterr().out
    assert "autoopt fit --config recipe:NAME" in out
    for name in list_recipes():
        line = next((ln for ln in out.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, f"{name} not listed:\n{out}"
        assert recipe_description(name) in line


def test_recipes_command_prints_a_recipe_and_its_path(capsys: pytest.CaptureFixture[str]):
    from lightning_autoopt.cli import main
    from lightning_autoopt.recipes import recipe_path

    main(["recipes", "lsgd_mnist1d"])
    assert capsys.readouterr().out == recipe_path("lsgd_mnist1d").read_text()
    main(["recipes", "lsgd_mnist1d", "--path"])
    assert capsys.readouterr().out.strip() == str(recipe_path("lsgd_mnist1d"))


def test_recipes_command_typo_exits_with_the_names(capsys: pytest.CaptureFixture[str]):
    from lightning_autoopt.cli import main

    with pytest.raises(SystemExit) as info:
        main(["recipes", "lsgd_mnist"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Did you mean 'lsgd_mnist1d'?" in err and "autodrop_mnist1d" in err


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--config", "recipe:autodrop_mnist1d"],
        ["fit", "-c", "recipe:autodrop_mnist1d"],
        ["fit", "--config=recipe:autodrop_mnist1d"],
        ["--config", "recipe:autodrop_mnist1d", "validate"],
    ],
)
def test_resolve_recipe_args_replaces_only_the_recipe(args: list[str]):
    from lightning_autoopt.cli import resolve_recipe_args
    from lightning_autoopt.recipes import recipe_path

    path = str(recipe_path("autodrop_mnist1d"))
    out = resolve_recipe_args([*args, "--trainer.max_epochs=1", "--model", "recipe_like_value"])
    assert len(out) == len(args) + 3
    assert any(a in (path, f"--config={path}") for a in out), out
    assert not any("recipe:" in a for a in out), out
    assert out[-3:] == ["--trainer.max_epochs=1", "--model", "recipe_like_value"]


def test_cli_config_recipe_typo_is_a_usage_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])
    with pytest.raises(SystemExit) as info:
        AutoOptCLI(args=["fit", "--config", "recipe:autodrop"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown recipe 'autodrop'" in err and "autodrop_mnist1d" in err


def test_validate_subcommand_runs_a_recipe_by_name(tmp_path, monkeypatch: pytest.MonkeyPatch):
    # The recipe: form is resolved before jsonargparse parses, so subcommands other than fit take it too.
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])
    monkeypatch.chdir(tmp_path)
    cli = AutoOptCLI(
        args=[
            "validate",
            "--config",
            "recipe:autodrop_mnist1d",
            "--trainer.limit_val_batches=2",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert cli.trainer.state.fn == "validate"
    assert "val_acc" in cli.trainer.callback_metrics


def test_lightning_tips_are_dropped_other_messages_kept():
    import logging

    from lightning.fabric.utilities.rank_zero import rank_zero_module
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    from lightning_autoopt.cli import silence_lightning_noise

    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = rank_zero_module.log
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        silence_lightning_noise()
        silence_lightning_noise()  # idempotent
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records == ["GPU available: False, used: False"]


def test_lightning_internal_leafspec_deprecation_is_dropped_others_kept():
    import warnings

    from lightning_autoopt.cli import silence_lightning_noise

    msg = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_lightning_noise()
        warnings.warn_explicit(msg, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(msg, FutureWarning, "user.py", 1, module="my_project.train")  # raised by user code
        warnings.warn_explicit("other", FutureWarning, "_pytree.py", 22, module="lightning.pytorch.utilities._pytree")
    assert [(str(w.message), w.filename) for w in caught] == [(msg, "user.py"), ("other", "_pytree.py")]


# ---------------------------------------------------------------------------------------------- restart-ready fit
TINY_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: {epochs}
  limit_train_batches: 4
  limit_val_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: tests.helpers.TinyClassifier
data:
  class_path: tests.helpers.TinyDataModule
"""


def _tiny_cli(tmp_path, monkeypatch: pytest.MonkeyPatch, *extra: str, epochs: int = 1, run: bool = True):
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(epochs=epochs))
    args = ["--config", str(config), *extra]
    return AutoOptCLI(args=["fit", *args] if run else args, run=run)


@pytest.fixture
def rank_zero_info_records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    import logging

    caplog.set_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero")
    return caplog


def test_cli_default_logger_is_a_fixed_run_folder_named_after_the_config(tmp_path, monkeypatch):
    from lightning_autoopt.loggers import ResumableCSVLogger

    cli = _tiny_cli(tmp_path, monkeypatch, run=False)
    logger = cli.trainer.logger
    assert isinstance(logger, ResumableCSVLogger)
    assert os.path.abspath(logger.log_dir) == str(tmp_path / "lightning_logs" / "tiny")
    assert cli.trainer.checkpoint_callback.save_last is True  # Lightning's default ModelCheckpoint, made restart-ready


def test_cli_respects_an_explicit_save_last_false_and_logger(tmp_path, monkeypatch):
    cli = _tiny_cli(
        tmp_path,
        monkeypatch,
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_last=false",
        "--trainer.logger=false",
        run=False,
    )
    assert cli.trainer.logger is None
    assert [cb.save_last for cb in cli.trainer.checkpoint_callbacks] == [False]


def test_cli_fit_again_resumes_from_last_checkpoint_and_says_from_which_step(
    tmp_path, monkeypatch, rank_zero_info_records
):
    first = _tiny_cli(tmp_path, monkeypatch, epochs=1)
    assert first.trainer.ckpt_path is None and first.trainer.global_step == 4
    assert "Resuming from" not in rank_zero_info_records.text
    second = _tiny_cli(tmp_path, monkeypatch, epochs=2)
    last = tmp_path / "lightning_logs" / "tiny" / "checkpoints" / "last.ckpt"
    assert second.trainer.ckpt_path == str(last)
    assert second.trainer.global_step == 8  # continued, not restarted
    assert f"Resuming from {last} (epoch 0, global step 4)" in rank_zero_info_records.text


def test_cli_auto_resume_false_and_explicit_ckpt_path_win(tmp_path, monkeypatch):
    _tiny_cli(tmp_path, monkeypatch, epochs=1)
    fresh = _tiny_cli(tmp_path, monkeypatch, "--auto_resume=false", epochs=1)
    assert fresh.trainer.ckpt_path is None and fresh.trainer.global_step == 4
    epoch_file = next((tmp_path / "lightning_logs" / "tiny" / "checkpoints").glob("epoch=*.ckpt"))
    chosen = _tiny_cli(tmp_path, monkeypatch, f"--ckpt_path={epoch_file}", epochs=2)
    assert chosen.trainer.ckpt_path == str(epoch_file)


# ---------------------------------------------------------------------------------------------- strategy names
def _strategy_cli(tmp_path, monkeypatch: pytest.MonkeyPatch, strategy_yaml: str = "", *extra: str):
    from lightning_autoopt.cli import AutoOptCLI

    monkeypatch.setattr(sys, "argv", ["autoopt"])
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "named.yaml"
    text = TINY_CONFIG.format(epochs=1).replace("  devices: 1\n", "  devices: 2\n")
    if strategy_yaml:
        text = text.replace("trainer:\n", f"trainer:\n  strategy:{strategy_yaml}\n", 1)
    config.write_text(text)
    return AutoOptCLI(args=["--config", str(config), "--trainer.logger=false", *extra], run=False)


@pytest.mark.parametrize(
    ("strategy_yaml", "extra", "period", "start_method"),
    [
        ("", ["--trainer.strategy=lsgd", "--trainer.strategy.period=4"], 4, "popen"),
        ("", ["--trainer.strategy", "lsgd_spawn", "--trainer.strategy.period=4"], 4, "spawn"),
        ("", ["--trainer.strategy=LSGDStrategy", "--trainer.strategy.period=4"], 4, "popen"),
        ("", ['--trainer.strategy={"class_path": "lsgd_fork", "init_args": {"period": 6}}'], 6, "fork"),
        ("\n    class_path: lsgd\n    init_args: {period: 4}", [], 4, "popen"),
        ("\n    class_path: lsgd_spawn\n    init_args: {period: 4}", [], 4, "spawn"),
        ("\n    class_path: lsgd_spawn\n    init_args: {period: 4, start_method: fork}", [], 4, "fork"),
        (" lsgd_spawn", ["--trainer.strategy.period=5"], 5, "spawn"),
        ("\n    class_path: LSGDStrategy\n    init_args: {period: 4}", [], 4, "popen"),
    ],
)
def test_registered_strategy_names_take_arguments(tmp_path, monkeypatch, strategy_yaml, extra, period, start_method):
    from lightning_autoopt.strategies import LSGDStrategy

    cli = _strategy_cli(tmp_path, monkeypatch, strategy_yaml, *extra)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, LSGDStrategy)
    assert strategy.period == period and strategy._start_method == start_method


def test_rewritten_config_keeps_its_name_for_the_run_folder(tmp_path, monkeypatch):
    from lightning_autoopt.cli import resolve_strategy_args

    cli = _strategy_cli(tmp_path, monkeypatch, " lsgd", "--trainer.strategy.period=4")
    assert cli._config_name() == "named"
    out = resolve_strategy_args(["fit", "--config", str(tmp_path / "named.yaml")])
    assert out[2] != str(tmp_path / "named.yaml") and out[2].endswith("/named.yaml")
    assert "LSGDStrategy" in open(out[2]).read()  # noqa: PTH123
    assert resolve_strategy_args(["--config=" + str(tmp_path / "tiny_none.yaml")]) == [
        "--config=" + str(tmp_path / "tiny_none.yaml")
    ]


def test_lightning_names_resolve_only_with_arguments():
    from lightning_autoopt.cli import resolve_strategy_args

    assert resolve_strategy_args(["--trainer.strategy=ddp"]) == ["--trainer.strategy=ddp"]
    assert resolve_strategy_args(["--trainer.strategy=auto", "--trainer.strategy.x=1"])[0] == "--trainer.strategy=auto"
    out = resolve_strategy_args(["--trainer.strategy=ddp_spawn", "--trainer.strategy.find_unused_parameters=true"])
    assert out == [
        "--trainer.strategy=lightning.pytorch.strategies.ddp.DDPStrategy",
        "--trainer.strategy.start_method=spawn",
        "--trainer.strategy.find_unused_parameters=true",
    ]
    help_args = resolve_strategy_args(["fit", "--trainer.strategy.help", "easgd"])
    assert help_args == ["fit", "--trainer.strategy.help=lightning_autoopt.strategies.easgd.EASGDStrategy"]


def test_lightning_name_with_arguments_builds_the_class(tmp_path, monkeypatch):
    from lightning.pytorch.strategies import DDPStrategy

    cli = _strategy_cli(
        tmp_path, monkeypatch, "", "--trainer.strategy=ddp_spawn", "--trainer.strategy.find_unused_parameters=true"
    )
    assert type(cli.trainer.strategy) is DDPStrategy
    assert cli.trainer.strategy._start_method == "spawn"
    assert cli.trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True


@pytest.mark.parametrize("where", ["argv", "yaml"])
def test_unknown_strategy_name_is_one_line_with_a_suggestion(tmp_path, monkeypatch, capsys, where):
    args = ["--trainer.strategy=lsdg"] if where == "argv" else []
    with pytest.raises(SystemExit) as info:
        _strategy_cli(tmp_path, monkeypatch, " lsdg" if where == "yaml" else "", *args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoopt: error: Unknown strategy 'lsdg'. Did you mean 'lsgd'"), err
    assert "lightning-autoopt strategies: aldsgd" in err[0] and "ddp_spawn" in err[0]


def test_bad_strategy_argument_is_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _strategy_cli(tmp_path, monkeypatch, "", "--trainer.strategy=lsgd", "--trainer.strategy.period=0")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "autoopt: error: `period` must be an integer >= 1 (optimizer steps between rounds), got 0. "
        "(AUTOOPT_TRACEBACK=1 shows the traceback)"
    ], err
    monkeypatch.setenv("AUTOOPT_TRACEBACK", "1")
    with pytest.raises(ValueError, match="period"):
        _strategy_cli(tmp_path, monkeypatch, "", "--trainer.strategy=lsgd", "--trainer.strategy.period=0")


def test_plain_trainer_typo_suggests_our_names():
    from lightning.pytorch import Trainer

    import lightning_autoopt  # noqa: F401  (installs the suggestion)

    with pytest.raises(ValueError) as info:
        Trainer(strategy="lsdg", logger=False)
    msg = str(info.value)
    assert msg.startswith("You selected an invalid strategy name: `strategy='lsdg'`. Did you mean 'lsgd'"), msg
    assert "lightning-autoopt strategies: aldsgd" in msg
    with pytest.raises(ValueError, match="Did you mean 'ddp'"):
        Trainer(strategy="ddpp", logger=False)


def test_one_line_error_keeps_the_informative_part():
    from lightning_autoopt.cli import one_line_error

    text = (
        "Does not validate against any of the Union subtypes\nSubtypes: [str, Strategy]\nErrors:\n"
        "  - Expected a <class 'str'>\n  - Problem with given class_path 'x.Y':\n      Option 'dim' is not accepted\n"
        "Given value type: <class 'dict'>"
    )
    assert one_line_error(ValueError(text)) == "Problem with given class_path 'x.Y': Option 'dim' is not accepted"
    assert one_line_error(ValueError("plain message\nmore")) == "plain message"

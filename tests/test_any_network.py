"""Any network through the commands: torchvision's models, a user's own class by ``_target_``, a pruned
sweep over a torchvision model, and the one-line error for a network outside the rolled graph's rules."""

import os
import subprocess
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient

from epochgraph.cli.graph_stage import recompute_signatures
from epochgraph.errors import EpochgraphError
from epochgraph.models import build_from_config
from tests import inprocess
from tests.conftest import TINY

USER_NETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's own network: conv + BatchNorm, global pooling, a linear head."""

    def __init__(self, num_classes, in_channels, hidden=8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class WithLSTM(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        out, _ = self.rnn(self.conv(x).flatten(2).transpose(1, 2))
        return self.fc(out[:, -1])
'''


def _train(tmp_path, *overrides, module_dir=None, timeout=900):
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = dict(os.environ)
    if module_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(module_dir), env.get("PYTHONPATH")) if p)
    args = [*overrides, f"mlflow.tracking_uri={tracking}", f"hydra.run.dir={tmp_path / 'outputs'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    if module_dir is None:  # the command without a new interpreter; a user's module on PYTHONPATH: a real process
        return inprocess.run("epochgraph.cli.train", args, cwd=tmp_path), tracking
    proc = subprocess.run([sys.executable, "-m", "epochgraph.cli.train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)
    return proc, tracking


def _only_run(tracking):
    client = MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def _assert_graph_stage_logged(client, run, epochs):
    for key in ("sig/degree/mean", "sig/eigenvector/kurtosis"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1))
    pictures = {f.path for f in client.list_artifacts(run.info.run_id, "graph")}
    assert {f"graph/epoch_{e:03d}.png" for e in range(1, epochs + 1)} <= pictures


@pytest.mark.slow
def test_a_torchvision_resnet18_trains_with_signatures_and_pictures(tmp_path):
    proc, tracking = _train(tmp_path, "model=torchvision", "model.arch=resnet18", "data.train_size=256",
                            "trainer.epochs=2", "data.val_size=100", "data.test_size=100", "trainer.threads=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _only_run(tracking)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "resnet18"
    assert run.data.params["model.arch"] == "resnet18"
    _assert_graph_stage_logged(client, run, 2)
    assert run.data.tags["graph_engine"] == "graph_tool"


@pytest.mark.slow
def test_a_user_network_by_target_trains_and_is_recomputed_from_its_weights(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(USER_NETS)
    proc, tracking = _train(tmp_path, "model=custom", "model._target_=usernets.TinyNet", "+model.hidden=6",
                            *TINY, module_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _only_run(tracking)
    assert run.data.tags["model"] == "TinyNet" and run.data.params["model._target_"] == "usernets.TinyNet"
    _assert_graph_stage_logged(client, run, 2)
    # the rolled graph: 1 input channel, 6 filters (BatchNorm folded), 10 outputs
    monkeypatch.syspath_prepend(str(tmp_path))
    params = run.data.params
    model = build_from_config({"name": "custom", "_target_": params["model._target_"], "hidden": 6},
                              in_channels=1, image_size=28, num_classes=10)
    from epochgraph.graph.tracing import topology_of

    assert topology_of(model).groups == {"input": 1, "conv": 6, "head": 10}
    assert [c.bn for c in topology_of(model).connections] == ["bn", None]
    # the graph stage afterwards rebuilds the user's class from the run's params: nothing new to log
    def logged():
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "sig/degree/mean"))
    before = logged()
    assert recompute_signatures(run.info.run_id, tracking, pictures=False) == 2
    assert logged() == before


@pytest.mark.slow  # a real process (the command, workers or a server): make test runs it
def test_a_network_outside_the_rules_is_one_line_and_leaves_no_run(tmp_path):
    (tmp_path / "usernets.py").write_text(USER_NETS)
    proc, tracking = _train(tmp_path, "model=custom", "model._target_=usernets.WithLSTM", *TINY,
                            module_dir=tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("epochgraph: error: WithLSTM: no rule for torch.nn.modules.rnn.LSTM at 'rnn'"), last
    assert "Traceback" not in proc.stderr
    db = tmp_path / "mlruns" / "mlflow.db"
    if db.exists():
        client = MlflowClient(tracking)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.parametrize(("overrides", "match"), [
    ({"name": "custom"}, "model=custom needs the class: add model._target_="),
    ({"_target_": "nowhere.Net"}, r"model._target_=nowhere.Net cannot be imported \(.*nowhere"),
    ({"_target_": "collections.OrderedDict"}, "returned a OrderedDict, not a torch nn.Module"),
    ({"name": "torchvision", "arch": "resnet7"}, "unknown torchvision model 'resnet7'"),
    ({"name": "torchvision", "arch": "resnet18", "depth": 3}, "model.arch=resnet18: .*depth"),
])
def test_bad_model_configs_are_one_line(overrides, match):
    with pytest.raises(EpochgraphError, match=match):
        build_from_config(overrides, in_channels=1, image_size=28, num_classes=10)


@pytest.mark.slow
def test_a_pruned_sweep_over_a_torchvision_model(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    proc, tracking = _train(tmp_path, "+experiment=pruned_sweep", "model=torchvision", "model.arch=mobilenet_v2",
                            *TINY, "trainer.epochs=3", f"storage.url={storage}", "hydra.sweeper.study_name=tv",
                            "hydra.sweeper.n_trials=3", "pruner=threshold", "pruner.lower=0.99",
                            "pruner.n_warmup_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="tv", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 3
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("pruned_sweep").experiment_id])
    trials = [r for r in runs if "trial" in r.data.tags]
    assert len(trials) == 3 and {r.data.tags["model"] for r in trials} == {"mobilenet_v2"}
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.tags["pruned_at_epoch"] == "2"
        _assert_graph_stage_logged(client, r, 2)


def test_the_stem_is_adapted_to_grey_and_small_images():
    import torch

    model = build_from_config({"name": "torchvision", "arch": "resnet18"}, in_channels=1, image_size=28,
                              num_classes=7)
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    kept = build_from_config({"name": "torchvision", "arch": "resnet18", "small_stem": False}, in_channels=3,
                             image_size=32, num_classes=10)
    assert kept.conv1.stride == (2, 2) and isinstance(kept.maxpool, torch.nn.MaxPool2d)


def test_a_plain_objective_with_a_small_or_untraceable_network_trains_to_its_end_with_its_curve_recorded():
    import warnings

    import torch
    from torch import nn

    from epochgraph import report_epoch
    from epochgraph.search.trial_attrs import trial_history

    class Tiny(nn.Module):  # 16 x 16 inputs: the size is told by its linear layer (256 = 4 channels x 8 x 8)
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Linear(256, 3)

        def forward(self, x):
            return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))

    class WithRnn(nn.Module):  # a GRU head: outside the rolled graph's rules
        def __init__(self):
            super().__init__()
            self.conv, self.gru, self.fc = nn.Conv2d(1, 4, 3), nn.GRU(4, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x):
            out, _ = self.gru(self.conv(x).mean(-1).transpose(1, 2))
            return self.fc(out[:, -1])

    x, y = torch.randn(24, 1, 16, 16), torch.randint(0, 3, (24,))

    def objective(trial, net):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for epoch in (1, 2, 3):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            report_epoch(trial, epoch, val_acc=float((net(x).argmax(1) == y).float().mean()), model=net)
        return 0.5

    for net, signed in ((Tiny(), True), (WithRnn(), False)):
        study = optuna.create_study(direction="maximize")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            study.optimize(lambda t, net=net: objective(t, net), n_trials=1)
        trial = study.trials[0]
        assert trial.state == optuna.trial.TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2, 3]
        history = trial_history(trial)
        assert len(history["val_acc"]) == 3
        assert ("sig/degree/mean" in history) == signed
        said = [str(w.message) for w in caught if "no graph signature" in str(w.message)]
        assert len(said) == (0 if signed else 1), said  # one warning per model, not one per epoch
        if not signed:
            assert "WithRnn" in said[0] and "GRU" in said[0]

"""The policy contract: conformance of every built-in, budgets, and user classes named by path."""

import sys
import textwrap

import pytest

from nslora.core.errors import UserError
from policies import REGISTRY, build, check_policy, resolve
from policies.base import Decision, Policy, SampleView, example_views


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if n != "reward"))  # reward: tests/test_reward.py
def test_every_builtin_passes_the_conformance_check(name):
    check_policy(build(name, {}, p=0.25, seed=0))


@pytest.mark.parametrize("name,p,expected", [("loss-ratio", 0.1, 2), ("loss-ratio", 0.5, 10), ("grad-norm", 0.25, 5), ("random", 0.3, 6)])
def test_ranked_policies_route_exactly_the_budget(name, p, expected):
    views = example_views(20)
    policy = build(name, {}, p=p, seed=0).calibrate(views)
    assert sum(policy.decide(v).route == "symbolic" for v in views) == expected


def test_loss_ratio_sends_least_progress_and_grad_norm_sends_smallest_norm():
    views = example_views(20)
    lr = build("loss-ratio", {}, p=0.1, seed=0).calibrate(views)
    chosen = {v.id for v in views if lr.decide(v).route == "symbolic"}
    assert chosen == {"ex19", "ex18"}  # largest C1: the loss fell least
    gn = build("grad-norm", {}, p=0.1, seed=0).calibrate(views)
    smallest = sorted(views, key=lambda v: v.c2)[:2]
    assert {v.id for v in views if gn.decide(v).route == "symbolic"} == {v.id for v in smallest}
    high = build("grad-norm", {"direction": "high"}, p=0.1, seed=0).calibrate(views)
    assert {v.id for v in views if high.decide(v).route == "symbolic"} == {v.id for v in sorted(views, key=lambda v: v.c2)[-2:]}


def test_dynamics_policies_send_the_hard_to_learn_and_the_contradicted():
    views = example_views(20)
    carto = build("cartography", {}, p=0.1, seed=0).calibrate(views)
    scored = [v for v in views if v.dynamics["confidence"] is not None]
    hard = sorted(scored, key=lambda v: v.dynamics["confidence"] + v.dynamics["variability"])[:2]
    assert {v.id for v in views if carto.decide(v).route == "symbolic"} == {v.id for v in hard}
    aum = build("aum", {}, p=0.1, seed=0).calibrate(views)
    lowest = sorted(scored, key=lambda v: v.dynamics["aum"])[:2]
    assert {v.id for v in views if aum.decide(v).route == "symbolic"} == {v.id for v in lowest}
    # A view without dynamics (an older run's) is never among the first sent.
    assert all(p.decide(views[0]).route == "numerical" for p in (carto, aum))


def test_random_is_reproducible_by_seed_and_differs_across_seeds():
    views = example_views(40)
    pick = lambda seed: {v.id for v in views if build("random", {}, p=0.25, seed=seed).calibrate(views).decide(v).route == "symbolic"}
    assert pick(1) == pick(1)
    assert pick(1) != pick(2)


def test_uncalibrated_ranked_policy_says_so():
    with pytest.raises(RuntimeError, match="calibrate"):
        build("loss-ratio", {}, p=0.1, seed=0).decide(example_views(2)[1])


def test_conformance_check_catches_broken_policies():
    class NoReason(Policy):
        name = "no-reason"

        def decide(self, view):
            return Decision("symbolic", 0.5, "")

    class LearnsInInit(Policy):
        def __init__(self):
            self.threshold_ = 1.0

        def decide(self, view):
            return Decision("numerical", 1.0, "x")

    class BadRoute(Policy):
        def decide(self, view):
            return Decision("both", 1.0, "x")

    for cls, msg in [(NoReason, "no reason"), (LearnsInInit, "only store settings"), (BadRoute, "route must be")]:
        with pytest.raises(AssertionError, match=msg):
            check_policy(cls())


def test_user_policy_resolves_from_a_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(textwrap.dedent('''
        from policies import Decision, Policy

        class LongQuestions(Policy):
            def __init__(self, min_chars=10):
                self.min_chars = min_chars

            def decide(self, view):
                long = len(view.question) >= self.min_chars
                return Decision("symbolic" if long else "numerical", 1.0, f"question has {len(view.question)} chars", "user")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = build("my_rules:LongQuestions", {"min_chars": 12}, p=0.1, seed=0)
    check_policy(policy)
    assert policy.decide(SampleView("x", 2, 1.0, 0.0, 1.0, False, question="a long question?")).route == "symbolic"
    sys.modules.pop("my_rules", None)


@pytest.mark.parametrize("name,msg", [("nope", "not a built-in"), ("no_such_module_xyz:Cls", "cannot be imported"),
                                      ("policies.base:Missing", "has no 'Missing'")])
def test_bad_policy_names_explain_the_fix(name, msg):
    with pytest.raises(UserError, match=msg):
        resolve(name)

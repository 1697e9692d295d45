"""Learned routing: preference pairs from runs -> trl reward model -> calibrated `reward` policy.

Importing this package registers "reward" without importing torch, transformers, trl or datasets; those load
when pairs are built, a model is trained, or a policy folder is first used.
"""

from policies.reward.policy import RewardPolicy

__all__ = ["RewardPolicy", "build_pairs", "train_reward_policy", "RewardPolicyConfig", "evaluate_policy", "describe_policy"]


def __getattr__(name):
    # Lazy re-exports: pairs pulls numpy only, train pulls nothing heavy at import, but keep the package light.
    if name == "build_pairs":
        from policies.reward.pairs import build_pairs
        return build_pairs
    if name in ("train_reward_policy", "RewardPolicyConfig"):
        from policies.reward import train
        return getattr(train, name)
    if name in ("evaluate_policy", "describe_policy"):
        from policies.reward import evaluate
        return getattr(evaluate, name)
    raise AttributeError(name)

"""The rules an evolve record (``<data_root>/evolve/<id>.json``) keeps: which config its rounds
run with, and whether a round's model becomes the next round's policy.

``settle_config(record, cfg_json, allow=, next_round=)``: a new record stores the validated
config (``run_config``, JSON) and its hash; every round then runs with exactly that config.
A resume with another config raises ``EvolveConfigChanged`` naming the fields, unless
``allow``: then the change becomes the stored config and is logged in ``config_changes``
with the round it applies from (each round's entry also records the ``config_hash`` it ran
with). ``config_changes(old, new)`` lists the differing fields (dotted; a tagged section whose
``kind`` changed counts as one field).

``round_overrides(run_config, sets, stored)``: what a round's run is given: the whole config
for a new run; for a run that exists (a resumed round), only the fields that differ from its
stored config, so its ``reruns.jsonl`` logs exactly the change.

``promotion_refusal(parent, child, alpha)``: why a model is significantly worse than its
parent on the same held-out problems (paired exact McNemar: the parent is right on more of
the problems where they disagree, with p < alpha), or None when it is not.
"""

from __future__ import annotations

import hashlib
import json
import time

from infra.config import RunConfig, apply_overrides
from tasks.evaluate import mcnemar


class EvolveConfigChanged(ValueError):
    """A resume names a config other than the one the evolve was started with."""


def config_hash(cfg_json: dict) -> str:
    return hashlib.sha256(json.dumps(cfg_json, sort_keys=True).encode()).hexdigest()[:16]


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, dict]:
    """``{dotted field: {"old": ..., "new": ...}}`` for every field that differs. Sections with
    the same keys (and the same ``kind``) are compared field by field; anything else whole."""
    out: dict[str, dict] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b) and a.get("kind") == b.get("kind"):
            out.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = {"old": a, "new": b}
    return out


def _summary(changes: dict[str, dict], most: int = 6) -> str:
    shown = [f"{k} {json.dumps(v['old'])} -> {json.dumps(v['new'])}" for k, v in list(changes.items())[:most]]
    more = f" and {len(changes) - most} more" if len(changes) > most else ""
    return "; ".join(shown) + more


def settle_config(record: dict, cfg_json: dict, *, allow: bool, next_round: int) -> None:
    """Store ``cfg_json`` in a record that has none; on a record that has one, accept only the
    same config, or (``allow``) log the change and store the new one (see the module doc)."""
    new_hash = config_hash(cfg_json)
    if "run_config" not in record:  # a new evolve, or one recorded before configs were stored
        record.update(run_config=cfg_json, config_hash=new_hash, config_changes=record.get("config_changes", []))
        return
    if record["config_hash"] == new_hash:
        return
    changes = config_changes(record["run_config"], cfg_json)
    if not allow:
        raise EvolveConfigChanged(
            f"evolve {record['evolve_id']} was started with another config ({_summary(changes)}); resume it with the "
            f"same config and --set values, or pass --allow-config-change to apply the change from round {next_round} on "
            "(it is recorded in the evolve record)")
    record["config_changes"] = [*record.get("config_changes", []),
                                {"from_round": next_round, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changes}]
    record.update(run_config=cfg_json, config_hash=new_hash)


def round_overrides(run_config: dict, sets: dict, stored: dict | None) -> dict:
    """Overrides that give a round's run ``run_config`` with ``sets`` (dotted or top-level keys):
    all of it for a new run (``stored`` None), else the dotted fields that differ from ``stored``."""
    if stored is None:
        return {**run_config, **sets}
    desired = RunConfig.model_validate(apply_overrides(run_config, sets)).model_dump(mode="json")
    return {k: v["new"] for k, v in config_changes(stored, desired).items()}


def promotion_refusal(parent: dict[str, bool], child: dict[str, bool], alpha: float) -> str | None:
    """Why the child (per-problem correctness) is significantly worse than the parent on their
    common problems, or None."""
    t = mcnemar(parent, child)
    if t["a_only"] > t["b_only"] and t["p_value"] < alpha:
        return (f"it is significantly worse than its parent on the held-out problems: of {t['n']} problems it breaks "
                f"{t['a_only']} its parent solves and fixes {t['b_only']} (McNemar p = {t['p_value']:.2g} < "
                f"evolve.worse_alpha {alpha})")
    return None

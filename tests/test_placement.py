"""Placement by role (rlt_ray.config.placement): label selectors, custom resources, and the start-up check that names the
key of a layout the cluster cannot place. Pure, no Ray."""

import pytest

from rlt_ray.errors import ConfigError
from rlt_ray.config import load_config
from rlt_ray.config.placement import check_placement, node_fits, role_options


def _node(cpus, labels=None, **resources):
    return {"Alive": True, "Labels": labels or {}, "Resources": {"CPU": cpus, **resources}}


PER_ACTOR = {role: {"CPU": 1.0, "GPU": 0.0} for role in ("learner", "rollout", "scorer")}


def test_label_selectors_follow_rays_syntax():
    node = _node(8, {"rlt-role": "learner", "zone": "a"})
    assert node_fits(node, {"rlt-role": "learner"}, {})
    assert not node_fits(node, {"rlt-role": "worker"}, {})
    assert node_fits(node, {"rlt-role": "!worker"}, {})
    assert node_fits(node, {"zone": "in(a,b)"}, {}) and not node_fits(node, {"zone": "!in(a,b)"}, {})
    assert not node_fits(node, {"missing": "x"}, {})
    assert node_fits(_node(8, learner_node=1.0), {}, {"learner_node": 1}) and not node_fits(_node(8), {}, {"x": 1})


def test_role_options_carry_the_placement():
    cfg = load_config(None, ["resources.rollout_placement.labels={rlt-role: worker}",
                             "resources.scorer_placement.resources={scorer_node: 0.5}"])
    assert role_options(cfg, "rollout") == {"label_selector": {"rlt-role": "worker"}}
    assert role_options(cfg, "scorer") == {"resources": {"scorer_node": 0.5}}


def test_a_layout_that_fits_passes_and_one_that_does_not_names_the_key():
    cfg = load_config(None, ["resources.learner_placement.labels={rlt-role: learner}",
                             "resources.rollout_placement.labels={rlt-role: worker}"])
    nodes = [_node(0), _node(4, {"rlt-role": "learner"}), _node(2, {"rlt-role": "worker"})]
    check_placement(cfg, nodes, PER_ACTOR, {"learner": 4, "rollout": 2, "scorer": 1})
    with pytest.raises(ConfigError, match=r"'resources.learner_placement': 5 learner actors need CPU 5 .* have CPU 4"):
        check_placement(cfg, nodes, PER_ACTOR, {"learner": 5, "rollout": 2, "scorer": 1})
    with pytest.raises(ConfigError, match=r"'resources.rollout_placement': no alive node .*rlt-role"):
        check_placement(cfg, [n for n in nodes if n["Labels"].get("rlt-role") != "worker"], PER_ACTOR,
                        {"learner": 1, "rollout": 1})
    dead = [dict(nodes[2], Alive=False)] + nodes[:2]
    with pytest.raises(ConfigError, match="rollout_placement"):
        check_placement(cfg, dead, PER_ACTOR, {"rollout": 1})


def test_strict_pack_needs_one_node_large_enough():
    cfg = load_config(None, ["resources.learner_strategy=STRICT_PACK"])
    nodes = [_node(2), _node(2)]
    check_placement(cfg, nodes, PER_ACTOR, {"learner": 2})
    with pytest.raises(ConfigError, match="learner_strategy.*STRICT_PACK"):
        check_placement(cfg, nodes, PER_ACTOR, {"learner": 4})
    with pytest.raises(ConfigError, match="resources.learner_strategy"):
        load_config(None, ["resources.learner_strategy=ANYWHERE"])

"""Checkpoints: pytrees to .npz and back by key path, no pickle, mismatches named."""

import io
import json
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alloop.errors import UserError
from alloop.io.checkpoint import encode_tree, flatten_tree, load_meta, load_tree, save_tree


class Pair(NamedTuple):
    mu: dict
    count: np.ndarray


def tree():
    return {
        "params": {"w": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.zeros(2, np.float32)},
        "opt": [Pair({"w": np.ones((3, 2), np.float32)}, np.array(7, np.int32)), None, ()],
        "step": np.int64(12),
    }


def assert_tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_flatten_names_leaves_by_key_path():
    keys = [k for k, _ in flatten_tree(tree())]
    assert keys == ["params/w", "params/b", "opt/0/mu/w", "opt/0/count", "step"]


def test_roundtrip_preserves_values_types_and_structure(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, tree(), {"epoch": 3, "loss": 0.5})
    back = load_tree(p, tree())
    assert_tree_equal(back, tree())
    assert type(back["opt"][0]) is Pair and back["opt"][1] is None and back["opt"][2] == ()
    assert isinstance(back["opt"], list)
    assert load_meta(p) == {"epoch": 3, "loss": 0.5}


def test_bytes_are_deterministic():
    assert encode_tree(tree(), {"a": 1}) == encode_tree(tree(), {"a": 1})
    assert encode_tree(tree(), {"a": 1}) != encode_tree(tree(), {"a": 2})


def test_file_is_a_plain_npz_without_pickle(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, tree(), {"k": "v"})
    with np.load(p, allow_pickle=False) as z:
        assert set(z.files) == {
            "params/w",
            "params/b",
            "opt/0/mu/w",
            "opt/0/count",
            "step",
            "__meta__",
        }
        assert z["__meta__"].shape == () and z["__meta__"].dtype.kind == "U"
        assert json.loads(str(z["__meta__"])) == {"k": "v"}
    with zipfile.ZipFile(p) as zf:
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())


def test_jax_arrays_and_optax_adam_state_roundtrip_exactly(tmp_path):
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (4, 3)), "b": jnp.zeros(3)}
    opt = optax.adam(1e-3)
    state = opt.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = opt.update(grads, state, params)
    full = {"params": params, "opt": state}
    p = tmp_path / "c.npz"
    save_tree(p, full, {})
    back = load_tree(p, full)
    assert_tree_equal(back, full)
    assert type(back["opt"][0]) is type(state[0])
    assert back["opt"][0].count.dtype == np.int32 and back["opt"][0].count.shape == ()
    assert int(back["opt"][0].count) == 1
    assert "opt/0/mu/w" in dict(flatten_tree(full))


def test_like_may_be_shape_dtype_structs(tmp_path):
    p = tmp_path / "c.npz"
    params = {"w": np.ones((2, 2), np.float32)}
    save_tree(p, params, {})
    like = {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32)}
    np.testing.assert_array_equal(load_tree(p, like)["w"], params["w"])


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    p = tmp_path / "checkpoints" / "ckpt-000002.npz"
    p.parent.mkdir()
    save_tree(p, {"params": {"w": np.zeros((3, 1))}}, {})
    with pytest.raises(
        UserError,
        match=r"at params/w: shape \(3,1\) stored, \(4,1\) expected.*alloop train "
        + tmp_path.name
        + " --fresh",
    ):
        load_tree(p, {"params": {"w": np.zeros((4, 1))}})


def test_dtype_mismatch_is_named(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, {"w": np.zeros(3, np.float32)}, {})
    with pytest.raises(UserError, match="at w: dtype float32 stored, float64 expected"):
        load_tree(p, {"w": np.zeros(3, np.float64)}, run_name="exp")


def test_missing_key_is_named(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, {"w": np.zeros(3)}, {})
    with pytest.raises(UserError, match="at b: missing from the file.*alloop train exp --fresh"):
        load_tree(p, {"w": np.zeros(3), "b": np.zeros(1)}, run_name="exp")


def test_extra_stored_key_is_a_mismatch(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, {"w": np.zeros(3), "b": np.zeros(1)}, {})
    with pytest.raises(UserError, match="at b: stored but not in the model"):
        load_tree(p, {"w": np.zeros(3)})


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found: retrain"):
        load_tree(tmp_path / "nope.npz", {"w": np.zeros(1)})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_a_user_error(tmp_path, damage):
    p = tmp_path / "c.npz"
    save_tree(p, {"w": np.arange(100.0)}, {"a": 1})
    data = p.read_bytes()
    p.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"not a zip at all", "empty": b""}[damage]
    )
    with pytest.raises(UserError, match="is unreadable"):
        load_tree(p, {"w": np.zeros(100)})
    with pytest.raises(UserError, match="is unreadable"):
        load_meta(p)


def test_flipped_byte_inside_an_entry_is_caught(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, {"w": np.arange(100.0)}, {})
    data = bytearray(p.read_bytes())
    data[200] ^= 0xFF  # inside the first member's array data: the zip CRC no longer matches
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is unreadable"):
        load_tree(p, {"w": np.zeros(100)})


def test_pickled_object_array_is_refused(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, w=np.array([{"evil": 1}], dtype=object), __meta__=np.array("{}"))
    p = tmp_path / "c.npz"
    p.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="is unreadable"):
        load_tree(p, {"w": np.zeros(1)})


def test_object_leaves_and_bad_keys_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="not numeric"):
        save_tree(tmp_path / "c.npz", {"w": np.array(["a", None], dtype=object)}, {})
    with pytest.raises(ValueError, match="free of '/'"):
        save_tree(tmp_path / "c.npz", {"a/b": np.zeros(1)}, {})
    with pytest.raises(ValueError):
        save_tree(tmp_path / "c.npz", {"w": np.zeros(1)}, {"x": float("nan")})
    assert not (tmp_path / "c.npz").exists()


def test_single_array_tree(tmp_path):
    p = tmp_path / "c.npz"
    save_tree(p, np.arange(3), {})
    np.testing.assert_array_equal(load_tree(p, np.zeros(3, np.int64)), np.arange(3))


def test_meta_missing_is_reported(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(1))
    p = tmp_path / "c.npz"
    p.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="has no metadata"):
        load_meta(p)

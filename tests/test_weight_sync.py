import pytest
import torch

from rlt_ray.infra.weight_sync import bucket_nbytes, BufferMeter, check_layout, layout_for, pack_bucket, pack_to_host, spec_of, unpack
from rlt_ray.errors import WeightSyncError


def _named():
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed_tokens.weight": torch.randn(64, 16, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(3, generator=g),  # odd size: alignment
        "model.norm.weight": torch.randn(16, generator=g),
        "lm_head.weight": torch.randn(64, 16, generator=g),
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_pack_unpack_round_trip_in_few_buckets(dtype):
    named = _named()
    spec = spec_of(named.items(), dtype)
    layout = layout_for(spec, bucket_bytes=4096)
    assert 1 < len(layout) < len(named)  # bucketed: fewer buckets than tensors, more than one at this size
    buckets = [pack_bucket(named, metas) for metas in layout]
    assert [b.numel() for b in buckets] == [bucket_nbytes(m) for m in layout]
    got = dict(kv for metas, flat in zip(layout, buckets) for kv in unpack(metas, flat))
    assert got.keys() == named.keys()
    for name, t in named.items():
        assert got[name].dtype == getattr(torch, dtype) and got[name].shape == t.shape
        assert torch.equal(got[name], t.to(getattr(torch, dtype)))


def test_packing_into_a_reused_buffer_gives_the_fresh_bytes():
    """The learner packs every bucket into one buffer kept from sync to sync: a bucket packed there (into the
    first bytes of a larger buffer that still holds another bucket's) unpacks to a freshly packed one's tensors."""
    named = _named()
    layout = layout_for(spec_of(named.items(), "bfloat16"), bucket_bytes=4096)
    buffer = torch.full((max(bucket_nbytes(m) for m in layout) + 64,), 255, dtype=torch.uint8)
    for metas in layout + layout[::-1]:
        packed = pack_bucket(named, metas, out=buffer)
        assert packed.data_ptr() == buffer.data_ptr() and packed.numel() == bucket_nbytes(metas)
        for (name, got), (_, fresh) in zip(unpack(metas, packed), unpack(metas, pack_bucket(named, metas))):
            assert torch.equal(got, fresh) and torch.equal(got, named[name].to(torch.bfloat16)), name


def test_pack_to_host_packs_on_the_weights_device_then_copies_the_bucket_once():
    """The object-store export: on CPU the bucket is the packing buffer itself (no second copy); with a staging
    buffer (pinned host memory behind a GPU learner) it is that buffer's first bytes, holding the same bytes.
    The GPU case itself runs in scripts/gpu_check.py (checked against pack_bucket there, on an H200)."""
    named = _named()
    layout = layout_for(spec_of(named.items(), "bfloat16"), bucket_bytes=4096)
    size = max(bucket_nbytes(m) for m in layout)
    buffer, host = torch.zeros(size, dtype=torch.uint8), torch.full((size + 8,), 255, dtype=torch.uint8)
    def same(a, b):  # the tensors, not the alignment gaps between them (never written, never read)
        return all(torch.equal(x, y) for (_, x), (_, y) in zip(unpack(metas, a), unpack(metas, b)))

    for metas in layout:
        fresh = pack_bucket(named, metas)
        alone = pack_to_host(named, metas, buffer)
        assert alone.data_ptr() == buffer.data_ptr() and alone.numel() == fresh.numel() and same(alone, fresh)
        staged = pack_to_host(named, metas, buffer, host)
        assert staged.data_ptr() == host.data_ptr() and staged.numel() == fresh.numel() and same(staged, fresh)


def test_tensor_larger_than_a_bucket_gets_its_own():
    named = _named()
    layout = layout_for(spec_of(named.items()), bucket_bytes=16)
    assert len(layout) == len(named)


def test_check_layout_names_every_problem():
    named = _named()
    spec = spec_of(named.items(), "float32")
    layout = layout_for(spec, 1 << 20)
    check_layout(spec, layout)  # identical: accepted
    wrong = dict(spec)
    wrong["model.norm.weight"] = ((17,), "float32")
    wrong["model.extra.weight"] = ((4,), "float32")
    del wrong["lm_head.weight"]
    with pytest.raises(WeightSyncError) as err:
        check_layout(wrong, layout)
    msg = str(err.value)
    assert "missing ['model.extra.weight']" in msg
    assert "unknown ['lm_head.weight']" in msg
    assert "model.norm.weight: expected (17,) float32, got (16,) float32" in msg
    with pytest.raises(WeightSyncError, match="bfloat16"):
        check_layout(spec_of(named.items(), "bfloat16"), layout)


def test_buffer_meter_counts_a_bucket_until_its_last_view_is_gone():
    import gc

    meter = BufferMeter()
    named = _named()
    layout = layout_for(spec_of(named.items()), bucket_bytes=4096)
    held = []
    for metas in layout:  # one at a time, each dropped before the next: the peak is the largest bucket
        flat = pack_bucket(named, metas)
        meter.track(flat, [t for _, t in unpack(metas, flat)])
        del flat
        gc.collect()
    assert meter.live == 0 and meter.peak == max(bucket_nbytes(m) for m in layout)
    for metas in layout:  # a loader that keeps one view of every bucket keeps every bucket counted
        flat = pack_bucket(named, metas)
        views = [t for _, t in unpack(metas, flat)]
        meter.track(flat, views)
        held.append(views[0])
        del flat, views
    gc.collect()
    assert meter.live == sum(bucket_nbytes(m) for m in layout)
    held.clear()
    gc.collect()
    assert meter.live == 0


def test_close_group_aborts_nccl_and_leaves_gloo_alone(tmp_path):
    """NCCL communicators are aborted on leave (a dead peer can hang a dropped one); gloo groups need nothing and
    must stay usable until dropped. A real single-rank gloo group; NCCL needs a GPU, so its side is a recorder."""
    import socket

    from rlt_ray.infra.weight_sync import broadcast, close_group, open_group

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gloo = open_group("gloo", "127.0.0.1", port, 0, 1, 30)
    close_group(gloo, "gloo")
    t = torch.arange(4.0)
    broadcast(gloo, t)  # still a working group
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]

    class Communicator:
        calls: list = []

        def abort(self):
            self.calls.append("abort")
            raise RuntimeError("already aborted")  # swallowed: leaving never fails

    close_group(Communicator(), "nccl")
    close_group(None, "nccl")
    assert Communicator.calls == ["abort"]

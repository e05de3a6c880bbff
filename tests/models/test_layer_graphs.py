"""--layer-graphs: the training forward and backward of the encoder and decoder layer stacks through
torch.compile. On a GPU the stacks compile for the cudagraphs backend (CUDA graph trees, a recording per
batch shape). On the CPU the same compiled stacks run with dynamo's eager backend (the graphs dynamo
captures with dynamic shapes, run by eager autograd; AOT autograd's tracing of a layer, which the
cudagraphs backend records, is tested per layer in tests/modules/test_compile.py): the model's outputs
and gradients equal the eager model's over batches of several shapes, and new shapes trace nothing new.
GPU test: training updates with graphs equal the eager ones, and dropout draws anew each replay."""
import pytest
import torch
import torch._dynamo as dynamo

from fairseq_helpers import (assert_same_outputs_and_grads, build_model, make_dictionary, parameter_grads,
                             translation_batch, translation_loss)
from mega_fairseq.models import compile as compile_module
from mega_fairseq.models import mega as mega_module
from mega_fairseq.modules import MegaConfigError

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_unknown_value_is_refused():
    """fairseq's parser refuses it; a model built from a Namespace or a checkpoint's options too."""
    with pytest.raises(MegaConfigError, match="unknown value 'on' for --layer-graphs; choose one of auto, off"):
        compile_module.prepare_stack(torch.nn.ModuleList(), False, "on")


def test_compiled_layers_turn_graphs_off():
    model = build_model(["--compile-layers"])
    assert model.encoder.layer_graphs == model.decoder.layer_graphs == "off"
    assert build_model([]).encoder.layer_graphs == "auto"


@pytest.mark.parametrize("setting, training, cuda, expected", [
    ("auto", True, True, True), ("off", True, True, False), ("auto", False, True, False), ("auto", True, False, False),
])
def test_graphs_apply_when_training_on_cuda(setting, training, cuda, expected):
    x = type("Input", (), {"is_cuda": cuda})()
    assert compile_module.graphs_apply(setting, training, x) is expected


def test_compiled_stacks_match_eager_model(monkeypatch):
    """The model in training mode with its stacks compiled (counted) against the same model's
    eager layers: outputs and every gradient at several batch shapes; once a padded and an unpadded batch
    were traced, batches of new lengths and sizes trace nothing new (a single sentence would: size 1); only
    lengths and batch sizes are symbolic in the traced graphs, the model widths static."""
    traces, symbolic_sizes = [], []

    def counting_backend(graph, inputs):
        traces.append(graph)
        for node in graph.graph.find_nodes(op="placeholder"):
            tensor = node.meta.get("example_value")
            if isinstance(tensor, torch.Tensor):
                symbolic_sizes.extend((dim, tensor.dim()) for dim, size in enumerate(tensor.shape)
                                      if isinstance(size, torch.SymInt))
        return graph

    dynamo.reset()
    monkeypatch.setattr(compile_module, "GRAPH_BACKEND", counting_backend)
    monkeypatch.setattr(mega_module, "graphs_apply", lambda setting, training, x: setting == "auto" and training)
    dictionary = make_dictionary()
    flags = []
    graphed = build_model(flags, dictionary, seed=4).train()
    eager = build_model([*flags, "--layer-graphs", "off"], dictionary, seed=4).train()
    shapes = ((0, [7, 5, 2], [6, 4, 6]), (1, [4, 4, 4, 4], [5, 5, 5, 5]),  # padded, unpadded
              (2, [11, 9], [9, 3]), (3, [15, 2, 6, 6, 9], [4, 12, 7, 7, 3]), (4, [6, 6], [10, 10]))
    for index, (seed, sources, targets) in enumerate(shapes):
        if index == 2:
            seen = len(traces)
        batch = translation_batch(dictionary, sources, targets, seed)
        assert_same_outputs_and_grads(graphed, eager, batch)
    assert seen > 0 and len(traces) == seen, "new lengths and batch sizes must reuse the traced stacks"
    assert symbolic_sizes and all(dim < 2 for dim, _ in symbolic_sizes), \
        f"only lengths and batch sizes are dynamic (dims 0 and 1), not the widths: {symbolic_sizes}"
    dynamo.reset()


def test_recordings_per_shape_and_leaf_gradients_out_of_the_pool():
    """record_per_shape with a fake recorder whose replays write into one buffer, as a CUDA graph's memory
    pool does: one recording per shape of the inputs; a backward replay's gradients of leaf inputs survive
    the next replay (copied out, values exact), the other inputs' gradients and a forward replay's outputs
    are returned as they are; a backward whose outputs do not match the inputs one to one has all copied."""
    pool, recorded = torch.zeros(6), []

    def record(model, inputs, static_input_idxs, *args, **kwargs):
        recorded.append(tuple(inputs[0].shape))

        def replay(new_inputs):
            size = new_inputs[0].numel()
            pool[:size].copy_(new_inputs[0] / 3)
            pool[3:3 + size].copy_(new_inputs[0] * 2)
            return [pool[:size], pool[3:3 + size], None][:len(new_inputs)]
        return replay

    backward = compile_module.record_per_shape(record, [0], 3)(None, [torch.ones(3)], [], is_backward=True)
    inputs = [torch.ones(3), None, None]
    first = backward(inputs)
    second = backward([torch.full((3,), 5.0), None, None])
    third = backward([torch.full((2,), 7.0), None, None])
    assert torch.equal(first[0], torch.ones(3) / 3) and first[2] is None
    assert torch.equal(second[0], torch.full((3,), 5.0) / 3) and torch.equal(third[0], torch.full((2,), 7.0) / 3)
    assert third[1].data_ptr() == pool[3:].data_ptr(), "a non-leaf input's gradient stays in the pool"
    assert recorded == [(3,), (2,)]
    unmatched = compile_module.record_per_shape(record, [0], 4)(None, [torch.ones(3)], [], is_backward=True)
    outputs = unmatched([torch.ones(3), None, None])
    assert all(output.data_ptr() not in (pool.data_ptr(), pool[3:].data_ptr()) for output in outputs[:2])
    forward = compile_module.record_per_shape(record, [0], 3)(None, [torch.ones(3)], [], is_backward=False)
    assert forward([torch.ones(3), None, None])[0].data_ptr() == pool.data_ptr()


def test_leaf_positions_are_the_parameters_and_leaves_requiring_grad():
    parameter, leaf = torch.nn.Parameter(torch.ones(2)), torch.ones(2, requires_grad=True)
    inputs = [3, leaf * 2, parameter, torch.ones(2), leaf]
    assert compile_module.leaf_positions(inputs) == [2, 4]


def test_aot_backward_outputs_follow_the_traced_inputs():
    """What record_per_shape relies on: AOT autograd's backward of a dynamo graph (parameters lifted to
    inputs, dynamic shapes) has one output per input of the graph, in order, the gradient of each leaf
    input at its position."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    seen = {}

    def probing_backend(graph, example_inputs):
        seen["inputs"] = list(example_inputs)

        def backward_compiler(backward, inputs):
            seen["outputs"] = [node.meta["val"] if node is not None else None
                               for node in backward.graph.find_nodes(op="output")[0].args[0]]
            return make_boxed_func(backward)
        return aot_module_simplified(graph, example_inputs, fw_compiler=lambda g, _: make_boxed_func(g),
                                     bw_compiler=backward_compiler)

    dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    x = torch.randn(6, 2, 4, requires_grad=True) * 2
    torch._dynamo.mark_dynamic(x, 0)
    torch.compile(model, backend=probing_backend)(x).sum().backward()
    leaves = compile_module.leaf_positions(seen["inputs"])
    assert len(seen["outputs"]) == len(seen["inputs"]) and len(leaves) == 6
    for position in leaves:
        assert tuple(seen["outputs"][position].shape) == tuple(seen["inputs"][position].shape)
    dynamo.reset()


GPU_FLAGS = ["--encoder-chunk-size", "3", "--decoder-chunk-size", "3"]


def graphed_and_eager_models_on_gpu():
    """The same small model (float32, CUDA, training mode) with layer graphs and eagerly, and two batches of
    different shapes."""
    dictionary = make_dictionary()
    models = [build_model([*GPU_FLAGS, "--layer-graphs", setting], dictionary, seed=4).float().cuda().train()
              for setting in ("auto", "off")]
    batches = [tuple(t.cuda() for t in translation_batch(dictionary, s, t, seed))
               for seed, s, t in ((0, [7, 5, 2], [6, 4, 6]), (1, [11, 9], [9, 3]))]
    return models, batches


@pytest.mark.gpu
@needs_gpu
def test_gradients_accumulated_over_replays_match_eager():
    """fairseq's --update-freq on the GPU: gradients summed over backward passes of two batch shapes before
    an update (recorded, then replayed) equal the eager model's, every parameter."""
    models, batches = graphed_and_eager_models_on_gpu()
    grads = []
    for model in models:
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            for batch in batches:
                translation_loss(model(*batch)[0]).backward()
        grads.append(parameter_grads(model))
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.gpu
@needs_gpu
def test_training_updates_on_cuda_graphs_match_eager():
    """On the GPU (cudagraphs backend): three updates of SGD on batches of two shapes, twice each (the
    second time replayed), give the eager model's losses; with dropout, two replays of one batch differ."""
    models, batches = graphed_and_eager_models_on_gpu()
    losses = {0: [], 1: []}
    for index, model in enumerate(models):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for batch in batches * 2:
            optimizer.zero_grad(set_to_none=True)
            loss = translation_loss(model(*batch)[0])
            loss.backward()
            optimizer.step()
            losses[index].append(float(loss))
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4, atol=1e-5)
    dropping = build_model([*GPU_FLAGS, "--dropout", "0.3", "--hidden-dropout", "0.2"], make_dictionary(),
                           seed=4).cuda().float()
    dropping.train()
    outputs = [dropping(*batches[0])[0].detach().clone() for _ in range(3)]
    assert not torch.equal(outputs[1], outputs[2])

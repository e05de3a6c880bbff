"""The LRA / Speech Commands classifier (mega_fairseq/models/lra.py): forward pass against a composition
of its parts example by example (so padding never changes a prediction), batch norms with padding,
pairs, real-valued inputs, architectures and option errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import SinusoidalPositionalEmbedding

from lra_helpers import PAD, TINY_MEGA, TINY_TRANSFORMER, build, fake_task, token_batch
from mega_fairseq.models.lra import LRA_ARCHITECTURES, SC_ARCHITECTURES, RealNumberEmbedding
from mega_fairseq.modules import MegaConfigError

def classify(model, features):
    """The classifier head applied by hand: activation(Linear) per layer, then the projection."""
    for layer in model.classifier:
        linear = layer[0]
        features = model.classifier_activation(features @ linear.weight.t() + linear.bias)
    return features @ model.sentence_projection_layer.weight.t()


def mega_reference(model, row):
    """Logits of one unpadded example through the Mega encoder's parts, without any padding mask."""
    encoder = model.encoder
    x = encoder.embed_tokens(row.unsqueeze(0)).transpose(0, 1)
    if encoder.embed_norm is not None:
        x = encoder.embed_norm(x)
    for layer in encoder.layers:
        x = layer(x)
    if encoder.final_norm is not None:
        x = encoder.final_norm(x)
    features = x[0] if model.sen_rep_type == "cls" else x.mean(dim=0)
    return classify(model, features)[0]


def transformer_reference(model, row):
    """Logits of one unpadded example: sqrt(D)-scaled embedding + sinusoidal positions pad+1.., embedding
    layer norm, post-norm layers (fairseq's), then the head."""
    encoder = model.encoder
    dim = encoder.embed_tokens.embedding_dim
    table = SinusoidalPositionalEmbedding.get_embedding(PAD + 1 + len(row), dim, PAD).double()
    x = encoder.embed_tokens(row) * math.sqrt(dim) + table[PAD + 1: PAD + 1 + len(row)]
    if encoder.emb_layer_norm is not None:
        x = encoder.emb_layer_norm(x)
    x = x.unsqueeze(1)
    for index in range(encoder.num_layers):
        x = encoder.layers[0 if len(encoder.layers) == 1 else index](x, encoder_padding_mask=None)
    features = x[0] if model.sen_rep_type == "cls" else x.mean(dim=0)
    return classify(model, features)[0]


MEGA_VARIANTS = [
    [],
    ["--chunk-size", "3", "--encoder-normalize-before"],
    ["--chunk-size", "4", "--norm-type", "scalenorm", "--attention-activation-fn", "laplace"],
    ["--sen-rep-type", "cls", "--norm-type", "rmsnorm", "--rel-pos-bias", "rotary", "--normalize-embedding"],
    ["--attention-activation-fn", "relu2", "--truncation-length", "4", "--encoder-ffn-embed-dim", "0"],
]


@pytest.mark.parametrize("options", MEGA_VARIANTS)
def test_mega_classifier_equals_its_parts_and_ignores_padding(options):
    model = build("mega_lra_listop", [*TINY_MEGA, *options])
    lengths = [9, 4, 7, 1]
    for extra_pads in (0, 5):
        batch, rows = token_batch(lengths, extra_pads=extra_pads)
        logits = model(batch, torch.tensor(lengths))
        for i, row in enumerate(rows):
            torch.testing.assert_close(logits[i], mega_reference(model, row), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("options", [[], ["--sen-rep-type", "mp", "--activation-fn", "silu"],
                                     ["--encoder-learned-pos"]])
def test_transformer_baseline_equals_its_parts_and_ignores_padding(options):
    model = build("transformer_lra_listop", [*TINY_TRANSFORMER, *options])
    assert len(model.encoder.layers) == 1 and model.encoder.num_layers == 2  # tied layers, as the original
    lengths = [6, 3, 8]
    batch, rows = token_batch(lengths, extra_pads=3)
    logits = model(batch, torch.tensor(lengths))
    if "--encoder-learned-pos" in options:  # learned positions: compare with the unpadded rows only
        for i, row in enumerate(rows):
            torch.testing.assert_close(logits[i], model(row.unsqueeze(0))[0], rtol=1e-9, atol=1e-9)
        return
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i], transformer_reference(model, row), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("norm_type", ["batchnorm", "syncbatchnorm"])
@pytest.mark.parametrize("chunk", ["-1", "4"])
def test_batch_norm_statistics_skip_padding(norm_type, chunk):
    """In training mode (batch statistics) extra pad columns change neither the logits nor the running
    statistics; in eval mode every example is classified as when alone."""
    options = [*TINY_MEGA, "--norm-type", norm_type, "--encoder-normalize-before", "--chunk-size", chunk]
    lengths = [10, 3, 6]
    outputs, stats = [], []
    for extra_pads in (0, 7):
        model = build("mega_lra_listop", options).train()
        batch, rows = token_batch(lengths, extra_pads=extra_pads)
        outputs.append(model(batch, torch.tensor(lengths)))
        stats.append(model.encoder.layers[0].mega_layer.norm.norm.running_mean.clone())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats[0], stats[1], rtol=1e-12, atol=1e-12)
    model.eval()
    logits = model(batch, torch.tensor(lengths))
    for i, row in enumerate(rows):
        torch.testing.assert_close(logits[i], mega_reference(model, row), rtol=1e-9, atol=1e-9)


def test_batch_norm_statistics_are_those_of_the_real_positions():
    """The first norm's batch statistics equal mean/variance over the real (non-pad) embeddings only."""
    model = build("mega_lra_listop", [*TINY_MEGA, "--norm-type", "batchnorm", "--encoder-normalize-before"]).train()
    batch, rows = token_batch([5, 2, 8], extra_pads=2)
    norm = model.encoder.layers[0].mega_layer.norm.norm
    norm.momentum = 1.0  # running statistics = this batch's
    model(batch)
    real = torch.cat([model.encoder.embed_tokens(row) for row in rows])
    torch.testing.assert_close(norm.running_mean, real.mean(dim=0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(norm.running_var, real.var(dim=0, unbiased=True), rtol=1e-9, atol=1e-9)


def test_real_valued_inputs_and_embedding():
    embedding = RealNumberEmbedding(5).double()
    x = torch.randn(2, 7, dtype=torch.float64)
    torch.testing.assert_close(embedding(x), x.unsqueeze(-1) * embedding.weight + embedding.bias)
    two_channels = RealNumberEmbedding(5, input_channels=2).double()
    x2 = torch.randn(2, 7, 2, dtype=torch.float64)
    expected = x2[..., :1] * two_channels.weight[0] + x2[..., 1:] * two_channels.weight[1] + two_channels.bias
    torch.testing.assert_close(two_channels(x2), expected)
    assert embedding.weight.shape == (5,)  # the original's parameter shape for one channel

    model = build("mega_lra_cifar10", [*TINY_MEGA, "--chunk-size", "4"], task=fake_task("image", num_classes=10))
    pixels = torch.rand(3, 12, dtype=torch.float64)
    logits = model(pixels, torch.full((3,), 12))
    assert logits.shape == (3, 10)
    for i in range(3):  # no padding mask for real values, examples independent in eval mode
        torch.testing.assert_close(logits[i], model(pixels[i:i + 1])[0])
    transformer = build("transformer_lra_cifar10", TINY_TRANSFORMER, task=fake_task("image", num_classes=10))
    assert transformer(pixels).shape == (3, 10)


@pytest.mark.parametrize("features", ["full", "concat"])
def test_document_pairs(features):
    model = build("mega_lra_aan", [*TINY_MEGA, "--pair-features", features], task=fake_task(num_classes=2, paired=True))
    first, _ = token_batch([5, 8], seed=1)
    second, _ = token_batch([7, 3], seed=2)
    logits = model(first, None, second, None)
    u, v = model.sentence_representation(first), model.sentence_representation(second)
    combined = torch.cat([u, v, u * v, u - v] if features == "full" else [v, u], dim=-1)
    torch.testing.assert_close(logits, classify(model, combined))
    assert model.classifier[0][0].in_features == 16 * (4 if features == "full" else 2)
    with pytest.raises(ValueError, match="lacks second documents"):
        model(first)


def test_every_mega_architecture_uses_a_bidirectional_ema():
    for arch in [a for a in LRA_ARCHITECTURES if a.startswith("mega")] + list(SC_ARCHITECTURES):
        task = fake_task("text" if arch in ("mega_lra_listop", "mega_lra_imdb", "mega_lra_aan") else "image",
                         paired=arch == "mega_lra_aan")
        model = build(arch, ["--encoder-layers", "1"], task=task)
        assert all(layer.mega_layer.move.bidirectional for layer in model.encoder.layers), arch


# (arch, task input, expected options): the original's architecture defaults
EXPECTED = [
    ("mega_lra_listop", "text", dict(encoder_embed_dim=80, encoder_hidden_dim=160, encoder_ffn_embed_dim=160, z_dim=64,
                                     n_dim=16, encoder_layers=6, chunk_size=-1, truncation_length=1024,
                                     max_positions=2002, norm_type="scalenorm", classifier_out_dim=160)),
    ("mega_lra_imdb", "text", dict(encoder_embed_dim=128, encoder_hidden_dim=256, z_dim=64, encoder_layers=4,
                                   max_positions=4002, norm_type="scalenorm")),
    ("mega_lra_cifar10", "image", dict(encoder_embed_dim=160, encoder_hidden_dim=320, z_dim=96, encoder_layers=8,
                                       chunk_size=1024, norm_type="batchnorm", max_positions=1024)),
    ("mega_lra_pf128", "image", dict(encoder_embed_dim=64, encoder_hidden_dim=128, z_dim=32, encoder_layers=4,
                                     chunk_size=16384, truncation_length=4096, max_positions=16384)),
    ("mega_sc_raw_base", "image", dict(encoder_embed_dim=60, encoder_hidden_dim=120, z_dim=30, n_dim=16,
                                       encoder_layers=6, chunk_size=1000, truncation_length=1000, max_positions=16000,
                                       norm_type="batchnorm", attention_activation_fn="laplace",
                                       encoder_normalize_before=False, classifier_out_dim=120, dropout=0.0)),
    ("mega_sc_raw_big", "image", dict(encoder_embed_dim=72, encoder_hidden_dim=144, z_dim=36, classifier_out_dim=144)),
    ("transformer_lra_imdb", "text", dict(layer_type="transformer", encoder_embed_dim=256, encoder_ffn_embed_dim=1024,
                                          encoder_layers=4, encoder_attention_heads=4, sen_rep_type="cls",
                                          apply_bert_init=True)),
    ("transformer_lra_pf32", "image", dict(encoder_embed_dim=128, encoder_layers=1, max_positions=1026,
                                           sen_rep_type="mp", apply_bert_init=False)),
]


@pytest.mark.parametrize("arch, input_type, expected", EXPECTED)
def test_architecture_defaults(arch, input_type, expected):
    model = build(arch, task=fake_task(input_type))
    for name, value in expected.items():
        assert str(getattr(model.args, name)) == str(value), name
    assert str(model.args.activation_fn) == ("silu" if arch.startswith("mega") else "gelu")


def test_command_line_overrides_architecture_defaults():
    model = build("mega_lra_listop", ["--encoder-layers", "1", "--n-dim", "3", "--chunk-size", "8"])
    assert len(model.encoder.layers) == 1 and model.args.n_dim == 3
    assert model.encoder.layers[0].mega_layer.chunk_size == 8


def test_encoder_normalize_before_flag_turns_prenorm_on_for_speech_commands():
    """The SC recipe passes --encoder-normalize-before (as the original's): the flag must mean prenorm."""
    model = build("mega_sc_raw_base", ["--encoder-layers", "1", "--encoder-normalize-before"],
                  task=fake_task("image"))
    assert model.args.encoder_normalize_before is True
    assert model.encoder.layers[0].mega_layer.prenorm and model.encoder.final_norm is not None


@pytest.mark.parametrize("options, task, message", [
    (["--chunk-size", "0"], None, "--chunk-size"),
    (["--z-dim", "0"], None, "--z-dim must be positive"),
    (["--n-dim", "-2"], None, "--n-dim must be positive"),
    (["--dropout", "1.5"], None, "--dropout must be in"),
    (["--act-dropout", "-0.1"], None, "--act-dropout"),
    (["--rel-pos-bias", "rotary", "--z-dim", "7"], None, "--z-dim"),
    (["--normalize-embedding", "--encoder-normalize-before"], None, "--normalize-embedding"),
    (["--sentence-class-num", "2"], None, "--sentence-class-num 2"),
    (["--input-type", "image"], None, "--input-type image"),
    (["--sen-rep-type", "cls"], "image", "--sen-rep-type cls"),
    (["--truncation-length", "-3"], None, "--truncation-length"),
    (["--layer-type", "transformer", "--encoder-attention-heads", "3", "--encoder-embed-dim", "16"], None,
     "--encoder-attention-heads 3"),
])
def test_bad_options_name_the_option(options, task, message):
    with pytest.raises(MegaConfigError, match=message.replace("(", r"\(")):
        build("mega_lra_listop", [*TINY_MEGA, *options], task=fake_task(task or "text"))


def test_bad_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build("mega_lra_listop", ["--norm-type", "groupnorm"])
    assert "--norm-type" in capsys.readouterr().err


def test_bert_init_of_the_transformer_baseline():
    model = build("transformer_lra_listop", TINY_TRANSFORMER)
    weight = model.encoder.layers[0].fc1.weight
    assert abs(weight.std().item() - 0.02) < 0.005 and model.encoder.embed_tokens.weight[PAD].abs().sum() == 0


def test_classifier_is_trained_by_cross_entropy():
    """A few optimizer steps on a fixed batch lower the loss (gradients reach every parameter)."""
    model = build("mega_lra_listop", [*TINY_MEGA, "--chunk-size", "4"]).train()
    batch, _ = token_batch([6, 9, 4, 7])
    target = torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(batch), target)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

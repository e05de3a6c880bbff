"""The fairseq Mega translation model: incremental decoding, beam search, options and errors."""
import random

import pytest
import torch
from fairseq.sequence_generator import SequenceGenerator

from mega_fairseq.modules import MegaConfigError
from fairseq_helpers import build_model, make_dictionary, random_tokens


def teacher_forcing_inputs(dictionary, generator, source_lengths, target_length):
    src = random_tokens(dictionary, source_lengths, generator, left_pad=True)
    target = random_tokens(dictionary, [target_length] * len(source_lengths), generator, left_pad=False)
    prev = torch.cat([torch.full((target.size(0), 1), dictionary.eos()), target[:, :-1]], dim=1)
    return src, src.ne(dictionary.pad()).sum(1), prev


@pytest.mark.parametrize("chunk", [-1, 1, 3])
@pytest.mark.parametrize("attention_fn", ["softmax", "laplace", "relu2"])
@pytest.mark.parametrize("source_padding", [False, True])
def test_incremental_decoding_equals_full_forward(chunk, attention_fn, source_padding):
    dictionary = make_dictionary()
    model = build_model(["--encoder-chunk-size", str(chunk), "--decoder-chunk-size", str(chunk),
                         "--attention-activation-fn", attention_fn, "--normalize-before"], dictionary)
    generator = random.Random(chunk * 7 + len(attention_fn) + source_padding)
    lengths = [9, 4, 6] if source_padding else [7, 7, 7]
    src, src_lengths, prev = teacher_forcing_inputs(dictionary, generator, lengths, target_length=8)
    with torch.no_grad():
        full, _ = model(src, src_lengths, prev)
        encoder_out = model.encoder(src, src_lengths)
    state = {}
    for step in range(prev.size(1)):  # with gradients on: the block path (tests/test_decoding_steps.py: steps)
        logits, _ = model.decoder(prev[:, : step + 1], encoder_out, incremental_state=state)
        torch.testing.assert_close(logits[:, 0].detach(), full[:, step], rtol=1e-9, atol=1e-9)
        self_states = [value for name, value in state.items() if name.endswith(".self")]
        assert len(self_states) == len(model.decoder.layers)
        for value in self_states:
            if "keys" in value and chunk > 0:
                assert value["keys"].size(1) < chunk


@pytest.mark.parametrize("chunk", [-1, 2])
@pytest.mark.parametrize("rel_pos_bias", ["simple", "rotary"])
def test_beam_search_scores_equal_full_forward(chunk, rel_pos_bias):
    """Each hypothesis' per-token scores from beam search (incremental state reordered
    between beams at every step) must equal a full teacher-forced forward pass."""
    dictionary = make_dictionary()
    model = build_model(["--decoder-chunk-size", str(chunk), "--rel-pos-bias", rel_pos_bias], dictionary, seed=3)
    reorders = []
    original_reorder = model.decoder.reorder_incremental_state
    model.decoder.reorder_incremental_state = lambda state, order: (reorders.append(order.clone()),
                                                                     original_reorder(state, order))[1]
    src = random_tokens(dictionary, [6, 9, 3], random.Random(5), left_pad=True)
    src_lengths = src.ne(dictionary.pad()).sum(1)
    search = SequenceGenerator([model], dictionary, beam_size=4, max_len_b=10)
    hypotheses = search.generate([model], {"net_input": {"src_tokens": src, "src_lengths": src_lengths}})
    assert reorders and any(not torch.equal(order, torch.sort(order).values) for order in reorders)
    for index, beams in enumerate(hypotheses):
        assert len(beams) == 4
        for hypothesis in beams:
            tokens = hypothesis["tokens"].unsqueeze(0)
            prev = torch.cat([torch.tensor([[dictionary.eos()]]), tokens[:, :-1]], dim=1)
            with torch.no_grad():
                logits, _ = model(src[index: index + 1], src_lengths[index: index + 1], prev)
            expected = torch.log_softmax(logits, dim=-1)[0].gather(1, tokens[0].unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(hypothesis["positional_scores"].double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [-1, 4])
def test_encoder_outputs_ignore_padding(chunk):
    """Left padding (fairseq's default for sources) changes no real output, chunked or not."""
    dictionary = make_dictionary()
    model = build_model(["--encoder-chunk-size", str(chunk)], dictionary)
    src = random_tokens(dictionary, [7, 7], random.Random(1), left_pad=True)
    padded = torch.cat([torch.full((2, 5), dictionary.pad()), src], dim=1)
    with torch.no_grad():
        plain = model.encoder(src, None)["encoder_out"][0]
        with_pads = model.encoder(padded, None)["encoder_out"][0]
    torch.testing.assert_close(with_pads[5:], plain, rtol=1e-10, atol=1e-10)
    assert with_pads[:5].abs().max() == 0


@pytest.mark.parametrize("chunk", [-1, 3])
@pytest.mark.parametrize("source_lengths, target_lengths", [
    ([6, 6], [5, 5]), ([6, 3], [5, 5]), ([6, 6], [5, 2]), ([4, 6, 2], [3, 5, 1])])
def test_model_forward_checks_padding_once_before_the_encoder(chunk, source_lengths, target_lengths):
    """The model's forward reads whether source and target hold padding in one host sync, before the encoder
    runs, and hands the answers to the embedders (which then check nothing themselves); the outputs equal
    the encoder and decoder each checking its own tokens, with and without pads on either side."""
    dictionary = make_dictionary()
    model = build_model(["--encoder-chunk-size", str(chunk), "--decoder-chunk-size", str(chunk)], dictionary)
    generator = random.Random(len(source_lengths) + chunk)
    src = random_tokens(dictionary, source_lengths, generator, left_pad=True)
    prev = random_tokens(dictionary, target_lengths, generator, left_pad=False)
    src_lengths = src.ne(dictionary.pad()).sum(1)
    told = []
    for embedder in (model.encoder.embedder, model.decoder.embedder):
        forward = embedder.forward
        embedder.forward = lambda tokens, padded=None, forward=forward: told.append(padded) or forward(tokens, padded)
    with torch.no_grad():
        logits, extra = model(src, src_lengths, prev)
    assert told == [len(set(source_lengths)) > 1, len(set(target_lengths)) > 1]
    told.clear()
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths)
        expected, expected_extra = model.decoder(prev, encoder_out)
    assert told == [None, None]
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(extra["attn"][0], expected_extra["attn"][0], rtol=0, atol=0)


def test_original_recipe_flags_are_accepted():
    model = build_model(["--activation-fn", "silu", "--attention-activation-fn", "softmax",
                         "--encoder-n-dim", "16", "--encoder-chunk-size", "-1", "--normalization-type", "layernorm",
                         "--truncation-length", "0", "--rel-pos-bias", "simple", "--hidden-dropout", "0.1"])
    block = model.encoder.layers[0].mega_layer
    assert block.move.ndim == 16 and block.move.truncation is None and block.chunk_size == -1
    assert model.decoder.output_projection.weight is model.encoder.embedder.embed_tokens.weight


@pytest.mark.parametrize("arch, dims", [("mega_wmt_en_de", (512, 1024, 128, 0.1)),
                                        ("mega_wmt_en_de_big", (1024, 2048, 256, 0.3))])
def test_architecture_defaults(arch, dims):
    from fairseq_helpers import parse_model_args
    from mega_fairseq.models.mega import base_architecture
    args = parse_model_args([], arch)
    base_architecture(args)
    assert (args.encoder_embed_dim, args.encoder_hidden_dim, args.encoder_z_dim, args.dropout) == dims
    assert args.encoder_n_dim == 16 and args.encoder_layers == 6 and args.decoder_layers == 6
    assert args.decoder_embed_dim == args.encoder_embed_dim and args.encoder_ffn_embed_dim == args.encoder_hidden_dim


@pytest.mark.parametrize("flags, option", [
    (["--encoder-chunk-size", "0"], "--encoder-chunk-size"),
    (["--decoder-chunk-size", "-3"], "--decoder-chunk-size"),
    (["--rel-pos-bias", "rotary", "--encoder-z-dim", "7"], "z-dim"),
    (["--encoder-n-dim", "0"], "--encoder-n-dim"),
    (["--decoder-embed-dim", "12"], "--decoder-embed-dim"),
])
def test_bad_options_name_the_option(flags, option):
    with pytest.raises(MegaConfigError, match=option):
        build_model(flags)


@pytest.mark.parametrize("flags, option", [(["--attention-activation-fn", "cosine"], "--attention-activation-fn"),
                                           (["--normalization-type", "groupnorm"], "--normalization-type"),
                                           (["--rel-pos-bias", "alibi"], "--rel-pos-bias")])
def test_unknown_choices_are_rejected_by_the_command_line(flags, option, capsys):
    with pytest.raises(SystemExit):
        build_model(flags)
    assert option in capsys.readouterr().err


def test_share_all_embeddings_needs_a_joined_dictionary():
    from types import SimpleNamespace
    from fairseq_helpers import parse_model_args, TINY
    from mega_fairseq.models.mega import MegaModel
    args = parse_model_args([*TINY, "--share-all-embeddings"])
    task = SimpleNamespace(source_dictionary=make_dictionary(20), target_dictionary=make_dictionary(25))
    with pytest.raises(MegaConfigError, match="joined dictionary"):
        MegaModel.build_model(args, task)


def test_source_longer_than_the_position_bias_is_a_clear_error():
    dictionary = make_dictionary()
    model = build_model(["--max-source-positions", "8"], dictionary)
    src = random_tokens(dictionary, [12], random.Random(0), left_pad=True)
    with pytest.raises(ValueError, match="max-source-positions"):
        model.encoder(src, None)

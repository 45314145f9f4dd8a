"""Configuration of hbit's BitNet models for transformers (`trust_remote_code=True`).

`hbit export --format hf` writes this file beside `modeling_hbit_bitnet.py`, `config.json`
(whose `auto_map` names both) and the weights. `hbit_quantization` says how each projection
quantizes its input: the variant (bitnet_b158, bitnet_v2, bitnet_a48, bitnet_v2_no_rotation,
bitnet_v2_weight_rotation, bitnet_b158_quarot, bitnet_b158_spinquant), the activation width
(8 or 4), which projections apply the online Hadamard transform first, its block (for widths with no Hadamard
matrix) and a4.8's top-K share, and whether the weights are stored `packed` (ternary codes and
scale: inference) or `latent` (float master weights: training).
"""

try:
    from transformers import PretrainedConfig
except ImportError:  # transformers 5 renamed it
    from transformers import PreTrainedConfig as PretrainedConfig


class HbitBitnetConfig(PretrainedConfig):
    model_type = "hbit_bitnet"

    def __init__(
        self,
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=None,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=True,
        hbit_quantization=None,
        bos_token_id=None,
        eos_token_id=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.hidden_act = hidden_act
        self.hbit_quantization = hbit_quantization or {
            "variant": "bitnet_v2",
            "activation_bits": 8,
            "hadamard": ["o_proj", "down_proj"],
            "hadamard_block": None,
            "topk_keep": None,
            "weights": "latent",
        }
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )

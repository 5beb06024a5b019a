"""Why each llama.cpp server test that fails against the workbench API cannot pass against a standard OpenAI server.

Filled in by reading each test's code (tools/server/tests/unit in llama-cpp-python's sdist):
(a) it tests a llama.cpp extension; (b) it expects their test model's exact output;
(c) it tests standard OpenAI behaviour that the workbench gets wrong (to be fixed).
Each failure is classed by the first assertion that fails (later ones are noted in the reason).
Keys are test names (before the parameters), "file::name", "name[NORMAL]" (the unstreamed variant of a test
with a streamed one) or full node ids; the most specific wins.
"""

from __future__ import annotations

CLASSES = {
    "a": "llama.cpp extension (its own routes, fields, options or error texts)",
    "b": "tied to their test model's exact output (tinyllama/stories text, token counts)",
    "c": "standard OpenAI behaviour the workbench API gets wrong",
}

A, B, C = "a", "b", "c"
FIRST_CHUNK = ("the first streamed chunk must have `content: null`; OpenAI's first chunk is "
               "`{\"role\": \"assistant\", \"content\": \"\"}`, as the workbench sends it")
NATIVE = "llama-server's own /completion route (n_predict, `content`, tokens, timings), not OpenAI's /v1/completions"
TOKENIZE = "needs llama-server's /tokenize route to build its request"
VERBOSE = "llama-server's `__verbose` debug field with its rendered prompt"
FINGERPRINT = ("`system_fingerprint` must start with \"b\" (llama.cpp's build number); the workbench sends "
               "OpenAI's \"fp_...\" form")

WHY: dict[str, tuple[str, str]] = {
    # test_basic.py
    "test_server_multiple_addresses": (A, "llama-server binds several comma-separated --host addresses at once"),
    "test_server_props": (A, "llama-server's /props route"),
    "test_server_models": (A, "expects the model id to be the --alias server option (tinyllama-2); the workbench "
                              "names the model by its models/ entry"),
    "test_server_slots": (A, "llama-server's /slots route"),
    "test_load_split_model": (A, "loads their split test model and calls /completion"),
    "test_no_ui": (A, "llama-server's built-in web UI at /"),
    "test_server_model_aliases_and_tags": (A, "llama-server's --alias/--tags fields (`aliases`, `tags`) in /models"),
    # test_chat_completion.py
    "test_chat_completion": (A, FINGERPRINT + "; then the prompt/completion token counts and reply text of their "
                                "stories260K model (69/77 prompt tokens, 'Suddenly', 'Whillicter') (b)"),
    "test_chat_completion_cached_tokens": (B, "exact prompt and cached token counts of their model and template "
                                              "(77 prompt tokens, 76/51/47 cached)"),
    "test_chat_completion_stream": (A, FIRST_CHUNK + "; also --alias as the model name, then their model's text (b)"),
    "test_chat_completion_with_openai_library": (A, FINGERPRINT + "; then their model's text 'Suddenly' (b)"),
    "test_chat_template": (A, VERBOSE),
    "test_chat_template_assistant_prefill": (A, VERBOSE),
    "test_chat_template_continue_final_message_vllm_compat": (A, VERBOSE + " (continue_final_message is vLLM's)"),
    "test_chat_template_continue_final_message_mutual_exclusion": (
        A, "add_generation_prompt/continue_final_message are vLLM/llama.cpp request fields, not OpenAI's"),
    "test_apply_chat_template": (A, "llama-server's /apply-template route"),
    "test_completion_with_response_format": (
        A, "a `schema` inside response_format type json_object is llama.cpp's; OpenAI's json_object has no schema "
           "(the workbench returns a JSON object, as OpenAI does)"),
    "test_completion_with_json_schema": (A, "a top-level `json_schema` request field is llama.cpp's"),
    "test_completion_with_grammar": (A, "the GBNF `grammar` request field is llama.cpp's"),
    "test_completion_with_invalid_grammar": (A, "the GBNF `grammar` request field is llama.cpp's"),
    "test_invalid_chat_completion_req": (
        A, "two assistant messages in a row are refused by llama.cpp's template check; OpenAI accepts them"),
    "test_chat_completion_with_timings_per_token": (A, FIRST_CHUNK + "; and `timings_per_token`/`timings`"),
    "test_logprobs_stream": (A, FIRST_CHUNK),
    "test_logit_bias": (A, TOKENIZE),
    "test_context_size_exceeded": (
        A, "llama.cpp's error type exceed_context_size_error with n_prompt_tokens/n_ctx; OpenAI answers 400 "
           "invalid_request_error, code context_length_exceeded, as the workbench does"),
    "test_context_size_exceeded_stream": (A, "llama.cpp's exceed_context_size_error shape (see above)"),
    "test_return_progress": (A, "the `return_progress` request field and `prompt_progress` chunks"),
    "test_chat_completions_token_count": (A, "llama-server's /chat/completions/input_tokens route"),
    "test_verbose_debug": (A, "the `verbose` request field and `__verbose` reply field"),
    # test_completion.py (all through llama-server's own /completion, /tokenize or /slots)
    "test_completion": (A, NATIVE), "test_completion_stream": (A, NATIVE),
    "test_completion_stream_vs_non_stream": (A, NATIVE),
    "test_completion_with_openai_library": (A, FINGERPRINT + "; then their model's text '(going|bed)' (b)"),
    "test_completion_stream_with_openai_library": (B, "their model's text '(going|bed)+' for their prompt"),
    "test_completion_stream_with_openai_library_stops": (B, "Phi-3.5's joke text ('Sure, here's one for')"),
    "test_consistent_result_same_seed": (A, NATIVE), "test_different_result_different_seed": (A, NATIVE),
    "test_consistent_result_different_batch_size": (A, NATIVE), "test_cache_vs_nocache_prompt": (A, NATIVE),
    "test_nocache_long_input_prompt": (A, NATIVE), "test_json_prompt_no_mtmd": (A, NATIVE),
    "test_json_prompt_mtm_error_when_not_supported": (A, NATIVE),
    "test_completion_with_tokens_input": (A, TOKENIZE + " and " + NATIVE),
    "test_completion_parallel_slots": (A, NATIVE), "test_completion_unified": (A, NATIVE + " (kv_unified)"),
    "test_completion_response_fields": (A, NATIVE), "test_n_probs": (A, NATIVE + " (n_probs)"),
    "test_n_probs_stream": (A, NATIVE + " (n_probs)"), "test_n_probs_post_sampling": (A, NATIVE + " (n_probs)"),
    "test_n_probs_post_backend_sampling": (A, NATIVE + " (n_probs)"),
    "test_completion.py::test_logit_bias": (A, NATIVE + " (and /tokenize)"),
    "test_cancel_request": (A, "llama-server's /slots route (is_processing) after /completion"),
    "test_completion_prompt_cache": (A, NATIVE + " (cache_prompt)"),
    # test_tool_call.py (their make_any_request helper)
    "test_completion_without_tool_call_fast": (
        A, "their streaming helper asserts no empty `content` delta, but OpenAI's first chunk has `content: \"\"`"),
    "test_completion_without_tool_call_slow": (
        A, "their streaming helper asserts no empty `content` delta (see above); real 3-8B models"),
    "test_completion_with_required_tool_real_model": (
        A, "streamed: their helper asserts no empty `content` delta, but OpenAI's first chunk has `content: \"\"`"),
    "test_completion_with_required_tool_real_model[NORMAL]": (
        B, "the sample model writes code until max_tokens (512), so the required call comes back cut (finish_reason "
           "length, arguments not yet JSON, as OpenAI returns a cut call); their 3-8B models finish it"),
    "test_weather": (B, "real 3-8B models' calls (Istanbul etc.)"),
    "test_calc_result": (B, "real 3-8B models' answers"), "test_thoughts": (A, "reasoning_content (DeepSeek R1)"),
    "test_hello_world": (B, "real 3-8B models' python calls"),
    # test_embedding.py
    "test_embedding_mixed_input": (
        A, "llama.cpp-only input shapes: an empty string (OpenAI refuses it), tokens mixed with text in one "
           "prompt, {prompt_string}/{content} objects; OpenAI's own shapes (text, token ids, lists of either) pass"),
    "test_embedding_content_text_same_as_string": (A, "{content: [parts]} objects as embedding input are llama.cpp's"),
    "test_embedding_pooling_none": (A, "llama-server's /embeddings route with --pooling none (per-token vectors)"),
    "test_embedding_pooling_none_oai": (A, "the --pooling none server option"),
    "test_embedding_usage_single": (B, "token counts of their BERT tokenizer ([CLS] ... [SEP]: 9 and 6)"),
    "test_embedding_usage_multiple": (B, "token counts of their BERT tokenizer (2 x 9)"),
    # test_tokenize.py
    "test_tokenize_detokenize": (A, "llama-server's /tokenize and /detokenize routes"),
    "test_tokenize_with_bos": (A, "llama-server's /tokenize route"),
    "test_tokenize_with_pieces": (A, "llama-server's /tokenize route"),
    # test_security.py
    "test_access_public_endpoint": (A, "llama-server leaves /health open without the key; OpenAI has no /health"),
    "test_access_static_assets_without_api_key": (A, "llama-server's web UI assets"),
    "test_incorrect_api_key": (
        A, "llama.cpp's error type authentication_error; OpenAI answers a wrong key with 401 "
           "invalid_request_error, code invalid_api_key, as the workbench does"),
    "test_correct_api_key": (A, "llama-server's /completions (its own /completion, `content` field)"),
    "test_correct_api_key_anthropic_header": (A, "Anthropic's X-Api-Key header on llama-server's /completions"),
    "test_openai_library_correct_api_key": (
        A, "points the OpenAI client at the server root without /v1 (llama-server serves OpenAI routes there too)"),
    "test_cors_options": (A, "llama-server answers every origin by default; the workbench's CORS is closed unless "
                             "--api-cors-origin names one"),
    "test_cors_origins_localhost_reflects": (A, "llama-server's `--cors-origins localhost` keyword"),
    "test_cors_origins_localhost_rejects": (A, "llama-server's `--cors-origins localhost` keyword"),
    "test_cors_origins_defaults_to_localhost_with_tools_enabled": (A, "llama-server's --tools option"),
    "test_cors_proxy_only_forwards_explicit_proxy_headers": (A, "llama-server's /cors-proxy route"),
    "test_local_media_file": (A, "llama-server's --media-path and local image files"),
}


def classify(nodeid: str) -> tuple[str, str]:
    """(class, reason) for a failed test's node id; ("unclassified", ...) when nobody has read it yet."""
    if nodeid in WHY:
        return WHY[nodeid]
    path, _, name = nodeid.split("[")[0].partition("::")  # parameters may hold "::" themselves
    file = path.rsplit("/", 1)[-1]
    if "CompletionMode.NORMAL" in nodeid and f"{name}[NORMAL]" in WHY:  # the unstreamed variant fails otherwise
        return WHY[f"{name}[NORMAL]"]
    return WHY.get(f"{file}::{name}") or WHY.get(name, ("unclassified", "not read yet"))

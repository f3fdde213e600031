"""gpubench's evaluation-throughput item runs on a CPU with a tiny checkpoint (a GPU runs it at 7B geometry)."""

from halviz.gpubench import eval_throughput


def test_eval_throughput_item_runs_and_counts_the_same_decodes(tiny_models):
    result = eval_throughput(tiny_models["llava-1.5"], images=2, tokens=3, methods=["prunehal", "vhr"])
    assert result["columns"] == 3 and result["images"] == 2 and result["tokens"] == 3
    assert result["images_per_s_halviz"] > 0 and result["images_per_s_generate"] > 0
    assert result["halviz_vs_generate_time"] > 0

import pytest

from studio.generators import ModelSpec, Param, ParamError


def spec():
    return ModelSpec(
        id="m",
        plugin="p",
        factory=lambda: None,
        params=(
            Param("steps", "int", 4, min=1, max=50),
            Param("scale", "float", 1.0, min=0.0),
            Param("mode", "str", "a", choices=("a", "b")),
            Param("flag", "bool", False),
        ),
    )


def test_defaults_are_filled_and_strings_coerced():
    values = spec().validate_params({"steps": "7", "scale": "2.5", "flag": "yes"})
    assert values == {"steps": 7, "scale": 2.5, "mode": "a", "flag": True}


@pytest.mark.parametrize(
    "given, message",
    [
        ({"steps": "0"}, "must be >= 1"),
        ({"steps": "51"}, "must be <= 50"),
        ({"steps": "4.5"}, "must be int"),
        ({"steps": True}, "must be int"),
        ({"scale": "nan"}, "must be a number"),
        ({"mode": "c"}, "must be one of a, b"),
        ({"flag": "maybe"}, "must be bool"),
        ({"nope": "1"}, "has no parameter 'nope'"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(given, message):
    with pytest.raises(ParamError, match=message):
        spec().validate_params(given)


def test_json_values_keep_their_type():
    assert spec().validate_params({"scale": 3})["scale"] == 3.0
    assert isinstance(spec().validate_params({"scale": 3})["scale"], float)


def test_unknown_param_type_is_a_programming_error():
    with pytest.raises(ValueError):
        Param("x", "complex")


def test_a_parameter_at_its_unset_means_value_is_left_out_of_the_recipe():
    model = ModelSpec(id="m", plugin="p", factory=lambda: None,
                      params=(Param("kernels", "str", "fast", choices=("fast", "exact"), unset_means="exact"),
                              Param("size", "int", 8)))
    assert model.validate_params({}) == {"kernels": "fast", "size": 8}
    assert model.validate_params({"kernels": "exact"}) == {"size": 8}  # as a recipe made before the parameter
    assert model.validate_params({"kernels": "fast", "size": 4}) == {"kernels": "fast", "size": 4}


def test_prompt_cache_encodes_a_prompt_once_and_drops_the_least_recently_used():
    from studio import api
    from studio.generators import PROMPT_CACHE_SIZE

    calls = []
    embed = api.prompt_cache(lambda prompt: calls.append(prompt) or [len(prompt)], size=2)
    assert embed("a red circle") is embed("a red circle") and calls == ["a red circle"]
    embed("a blue square")
    embed("a red circle")  # used again: now "a blue square" is the oldest
    embed("a green diamond")  # evicts "a blue square"
    embed("a red circle")
    embed("a blue square")
    assert calls == ["a red circle", "a blue square", "a green diamond", "a blue square"]
    assert api.prompt_cache(str.upper).cache_info().maxsize == PROMPT_CACHE_SIZE == 256

"""Shared assertion for the per-family /object_info tests: declared inputs against expected rows."""


def assert_required_inputs(got: dict, class_type: str, inputs) -> None:
    """`inputs` rows are (name, type or options, default, min, max, step); None means "not declared
    by the row". Values and their Python types (int vs float) must match."""
    assert got["input_order"]["required"] == [i[0] for i in inputs]
    for name, kind, default, lo, hi, step in inputs:
        spec = got["input"]["required"][name]
        opts = spec[1] if len(spec) > 1 else {}
        assert spec[0] == kind, f"{class_type}.{name} type/options"
        for key, want in (("default", default), ("min", lo), ("max", hi), ("step", step)):
            if want is not None:
                assert opts.get(key) == want and type(opts[key]) is type(want), f"{class_type}.{name} {key}"

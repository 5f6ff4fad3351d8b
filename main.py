"""latentgraph entry point.

    python main.py [server options]          serve the editor and the ComfyUI-compatible API
    python main.py run WORKFLOW [options]    run a workflow headless (API/UI JSON or a PNG)
    python main.py convert WORKFLOW          print the API-format prompt of a UI JSON or PNG

Device, precision, attention and custom-node flags (--cpu, --force-fp32, --attention,
--disable-all-custom-nodes, --whitelist-custom-nodes …) work with all three.
Only argument dispatch lives here; wiring.py builds what server/ and the headless runner are handed.
"""
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from nodes import runtime_options

    runtime, argv = runtime_options.parse(argv)
    runtime_options.apply(runtime)
    packs = runtime_options.pack_options(runtime)
    if argv[:1] == ["run"]:
        from graph.cli import run_main
        from nodes import folder_paths
        from wiring import headless_registry_factory

        return run_main(argv[1:], registry_factory=headless_registry_factory(packs),
                        folder_paths=folder_paths)
    if argv[:1] == ["convert"]:
        from graph.cli import convert_main
        from wiring import headless_registry_factory

        return convert_main(argv[1:], registry_factory=headless_registry_factory(packs))
    import functools

    from server.app import serve_main
    from wiring import server_setup

    return serve_main(argv, functools.partial(server_setup, pack_options=packs))


if __name__ == "__main__":
    sys.exit(main())

# The README's two commands are `make lab` and `make test`; the rest are for developers.
.PHONY: test lab lab-check deb bench clean

test:            ## install what is needed, lint, type-check, run unit and lab tests
	scripts/test

lab:             ## run wgagent on an embedded default, in throwaway network namespaces
	scripts/lab

lab-check:       ## the same without the live view: assert the end state, tear down, exit 0 or 1
	scripts/lab --check

deb:             ## build dist/wgagent_<version>_all.deb from the git-tracked files, then lintian
	scripts/deb

bench:           ## every benchmark, one table of ratios; writes bench/RESULTS.md (root; Debian's python3, as the .deb)
	/usr/bin/python3 bench/run.py --write bench/RESULTS.md

clean:
	rm -rf .venv dist build *.egg-info .mypy_cache .ruff_cache .pytest_cache

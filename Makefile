# Two commands on a fresh machine: `make test` and `make demo`.
#
# `make test` builds the environment a ComfyUI user has (ComfyUI's own requirements, then the pack's on top)
# in .venv, puts the ComfyUI 0.3.64 source tree in the git-ignored .cache/ComfyUI (from
# ../shared/comfyui/ComfyUI-0.3.64.tar.gz, sha256-checked, or a clone of the v0.3.64 tag where that archive
# is absent) and runs the whole suite, the real-ComfyUI tests (marker `comfyui`) included.
# Set COMFYUI_DIR to use another ComfyUI tree; VENV to use another virtualenv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
COMFYUI_DIR ?= .cache/ComfyUI
PYTEST_ARGS ?=

.PHONY: test demo venv comfyui lint validate-packaging clean

# The ComfyUI tree; its requirements.txt stands for the whole tree (it is renamed into place only when complete).
$(COMFYUI_DIR)/requirements.txt:
	bash tools/fetch_comfyui.sh "$(COMFYUI_DIR)"

comfyui: $(COMFYUI_DIR)/requirements.txt

# Rebuilt (pip installs only what changed) when any requirement list changes; an existing venv is reused.
$(STAMP): requirements.txt requirements-dev.txt tools/host-requirements.txt $(COMFYUI_DIR)/requirements.txt
	bash tools/make_venv.sh "$(VENV)" "$(COMFYUI_DIR)" "$(PYTHON)"
	touch $(STAMP)

venv: $(STAMP)

# pytest's exit 5 (nothing collected) is turned into a stated failure.
test: $(STAMP)
	@set +e; COMFYUI_DIR="$(abspath $(COMFYUI_DIR))" R2R_COMFY_VENV="$(abspath $(VENV))" HF_HUB_OFFLINE=1 \
		$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): that is a failure here"; exit 1; fi; \
	exit $$rc

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m r2r demo --out demo_output

# ruff, then mypy over r2r/ and nodes/ as the package ComfyUI imports (see [tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(PY) -m ruff check .
	@mkdir -p .cache/typecheck && ln -sfn ../.. .cache/typecheck/comfyui_r2r
	MYPYPATH=.cache/typecheck $(PY) -m mypy -p comfyui_r2r.r2r -p comfyui_r2r.nodes

# pyproject's static dependencies == requirements.txt, .comfyignore, icon, publish workflow; then the
# registry's own tool (comfy-cli, pinned in tools/comfy-cli.txt): comfy node validate + comfy node pack,
# and the archive's file list checked against .comfyignore.
validate-packaging: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_packaging.py
	PYTHON=$(PY) bash tools/check_registry_pack.sh

clean:
	rm -rf $(VENV) demo_output .pytest_cache

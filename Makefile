.PHONY: setup quickstart test
setup:
	bash scripts/setup.sh
quickstart:
	bash scripts/quickstart.sh
test:
	bash scripts/test.sh

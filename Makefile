# The two commands of the README. Each installs what it needs first (scripts/setup.sh).
.PHONY: demo test setup bench sanity

demo: setup
	npm run --silent demo

test:
	scripts/test.sh

setup:
	scripts/setup.sh

bench: setup
	npm run --silent bench

sanity: setup
	npm run --silent sanity -- ebs
	npm run --silent sanity -- efs

#!/usr/bin/env bash
# Re-vendors uPlot into host/ui/vendor/ from the npm package pinned in
# package.json (run install.sh first). The gateway embeds these files; the
# dashboard loads nothing from a CDN. To upgrade: change the version in
# package.json, `npm install --package-lock-only`, `bash install.sh`, then
# this, and commit package.json, package-lock.json and host/ui/vendor/.
set -euo pipefail
cd "$(dirname "$0")"
src=node_modules/uplot
dest=../../host/ui/vendor
version=$(node -p 'require("./node_modules/uplot/package.json").version')
cp "$src/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
cp "$src/dist/uPlot.min.css" "$dest/uPlot.min.css"
cp "$src/LICENSE" "$dest/uPlot.LICENSE"
printf 'uPlot %s, from the npm package uplot@%s (dist/uPlot.iife.min.js, dist/uPlot.min.css, LICENSE), copied by tests/ui/vendor.sh.\n' \
    "$version" "$version" > "$dest/VERSION"
echo "host/ui/vendor: uPlot $version"

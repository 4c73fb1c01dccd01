# Builder that links several test outputs into one: arguments `NAME=STORE-PATH`.
mkdir "$out"
for pair in "$@"; do
    ln -s "${pair#*=}" "$out/${pair%%=*}"
done

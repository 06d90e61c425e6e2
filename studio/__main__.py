from studio.entry import run

run()

"""The deployed event handlers, one module each (parse → shared.domain → emit), and their registry."""

module github.com/todeviced/todeviced

go 1.26

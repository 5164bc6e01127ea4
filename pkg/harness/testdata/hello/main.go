// Command hello is a trivial main package that harness's tests build with Build.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("hello from", os.Args[0])
}
